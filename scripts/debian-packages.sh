#!/usr/bin/env bash
# Install the Debian packages named as arguments that are missing, all at once.
#
# As root it installs them; with sudo it asks for it once; without either it prints the one
# command an administrator runs and exits 1. apt's output goes to a log, shown on failure.
set -uo pipefail
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

command="apt-get update -qq && apt-get install -y -qq --no-install-recommends ${missing[*]}"
if [ "$(id -u)" = 0 ]; then
  run=(bash -c "$command")
elif command -v sudo >/dev/null 2>&1; then
  run=(sudo bash -c "$command")
else
  echo "envbuild needs these Debian packages: ${missing[*]}" >&2
  echo "ask an administrator to run: sudo sh -c '$command'" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
log=$(mktemp)
if ! DEBIAN_FRONTEND=noninteractive "${run[@]}" >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "installing ${missing[*]} failed (log above)" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
