"""The files envbuild puts into every environment and image it makes: the GPU check (with its
own copy of pynvml) and the Dask guard, as a small ``envbuild`` package (the two standalone
modules and a stub ``__init__``), importable once its folder is on PYTHONPATH.

So ``python -m envbuild.gpucheck`` and ``dask scheduler --preload envbuild.dask`` work in an
image (``/opt/envbuild``, on its PYTHONPATH) and under ``envbuild run`` (the prefix's
``etc/envbuild/python``, put on PYTHONPATH by it), without installing envbuild there.
"""

from __future__ import annotations

from pathlib import Path

from envbuild.files.atomic import write_atomic

#: Where the package goes in an environment (relative to the prefix), and in an image.
PREFIX_FOLDER = Path("etc") / "envbuild" / "python"
IMAGE_FOLDER = "/opt/envbuild"

_STUB = '''"""Runtime files of envbuild, copied into this environment: the GPU check
(python -m envbuild.gpucheck) and the Dask guard (--preload envbuild.dask). Not the envbuild
tool itself."""
'''


def files() -> dict[str, bytes]:
    """Path inside the folder -> content."""
    package = Path(__file__).parent.parent
    found = {
        "envbuild/__init__.py": _STUB.encode(),
        "envbuild/dask.py": (package / "dask.py").read_bytes(),
    }
    for module in sorted((package / "gpucheck").glob("*.py")):
        found[f"envbuild/gpucheck/{module.name}"] = module.read_bytes()
    # The check's own NVML binding: the environment may hold no pynvml, or another one.
    found["envbuild/gpucheck/_pynvml.py"] = _pynvml_source()
    return found


def _pynvml_source() -> bytes:
    """The pynvml module of the nvidia-ml-py envbuild depends on (pinned exactly in
    pyproject.toml: an image's bytes must not depend on the machine that builds it)."""
    import importlib.util

    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None:  # pragma: no cover - a broken installation
        raise ModuleNotFoundError("nvidia-ml-py (pynvml) is not installed beside envbuild")
    return Path(spec.origin).read_bytes()


def write_runtime(prefix: Path) -> None:
    """The GPU check and the Dask guard, for ``envbuild run``; what an older envbuild put
    there and this one does not is removed."""
    wanted = files()
    folder = prefix / PREFIX_FOLDER
    if folder.is_dir():
        for stale in sorted(folder.rglob("*.py")):  # compiled caches stay
            if stale.relative_to(folder).as_posix() not in wanted:
                stale.unlink()
    for name, content in wanted.items():
        path = prefix / PREFIX_FOLDER / name
        try:
            if path.read_bytes() == content:
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, content)
