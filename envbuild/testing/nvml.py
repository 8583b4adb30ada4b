"""A fake libnvidia-ml.so.1, built from fake_nvml.c with the C compiler, so that the real
pynvml sees the GPUs and driver that environment variables describe (FAKE_NVML_DEVICES,
FAKE_NVML_DRIVER, FAKE_NVML_CUDA, FAKE_NVML_INIT: see the C file)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY = "libnvidia-ml.so.1"


def compiler() -> str | None:
    """The C compiler to use, if this machine has one."""
    return shutil.which("gcc") or shutil.which("cc")


def build(folder: Path) -> Path:
    """Compile the fake library into ``folder``; put ``folder`` on LD_LIBRARY_PATH to use it."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc) to build the fake NVML library")
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / LIBRARY
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(output), str(SOURCE)],
        check=True,
    )
    return output


if __name__ == "__main__":
    print(build(Path(sys.argv[1])).parent)
