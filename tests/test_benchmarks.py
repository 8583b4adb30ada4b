"""The benchmarks' own inputs stay usable: the README's figures come from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envbuild.testing.pypi_index import without_pypi

from .conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from forge import write_forge

ENVBUILD = str(Path(sys.executable).parent / "envbuild")


@pytest.mark.slow
def test_the_lock_benchmark_channel_solves_the_dask_gpu_example(tmp_path: Path) -> None:
    write_forge(tmp_path / "channel")
    example = without_pypi((REPO / "examples" / "dask-gpu" / "envbuild.yaml").read_text())
    # The benchmark channel models conda-forge's linux-64 and osx-arm64 only.
    example = example.replace("platforms: [linux-64, linux-aarch64]", "platforms: [linux-64]")
    spec = tmp_path / "envbuild.yaml"
    spec.write_text(example.replace("[../../build/demo-channel]", "[./channel]"))
    done = subprocess.run(
        [ENVBUILD, "lock", "--json", "--update-all", "-f", str(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["solves"] == 3  # cpu/linux-64, cpu/osx-arm64, cuda-12.4/linux-64


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_paired_rounds_put_every_case_in_every_position_equally_often(count: int) -> None:
    from paired import order

    names = [chr(ord("a") + i) for i in range(count)]
    for rounds in (count, 2 * count, 3 * count):
        positions = {(name, position): 0 for name in names for position in range(count)}
        for number in range(rounds):
            seen = order(names, number)
            assert sorted(seen) == names  # each case once per round
            for position, name in enumerate(seen):
                positions[(name, position)] += 1
        assert set(positions.values()) == {rounds // count}, positions
    # two cases alternate: the one that ran first runs second in the next round
    assert [order(["a", "b"], n)[0] for n in range(4)] == ["a", "b", "a", "b"]
