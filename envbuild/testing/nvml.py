"""A fake libnvidia-ml.so.1, built from fake_nvml.c with the C compiler, so that the real
pynvml sees the GPUs and driver that environment variables describe (FAKE_NVML_DEVICES,
FAKE_NVML_DRIVER, FAKE_NVML_CUDA, FAKE_NVML_INIT: see the C file).

For this machine by default; ``arch="aarch64"`` cross-compiles it with Debian's
``aarch64-linux-gnu-gcc`` (packages gcc-aarch64-linux-gnu and libc6-dev-arm64-cross) for an
arm64 python run under qemu-user."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY = "libnvidia-ml.so.1"
#: Target architecture -> Debian's cross compiler for it.
CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-gcc"}


def compiler(arch: str | None = None) -> str | None:
    """The C compiler to use for ``arch`` (None: this machine), if this machine has one."""
    if arch is not None:
        return shutil.which(CROSS_COMPILERS[arch])
    return shutil.which("gcc") or shutil.which("cc")


def build(folder: Path, arch: str | None = None) -> Path:
    """Compile the fake library into ``folder``; put ``folder`` on LD_LIBRARY_PATH to use it."""
    cc = compiler(arch)
    if cc is None:
        wanted = CROSS_COMPILERS[arch] if arch else "gcc"
        raise RuntimeError(f"no C compiler ({wanted}) to build the fake NVML library")
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / LIBRARY
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(output), str(SOURCE)],
        check=True,
    )
    return output


if __name__ == "__main__":
    arch = sys.argv[2] if len(sys.argv) > 2 else None
    print(build(Path(sys.argv[1]), arch).parent)
