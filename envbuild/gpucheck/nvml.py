"""NVML, the only hardware edge: the driver and every device, through ``pynvml`` (the
``nvidia-ml-py`` distribution), imported only when a GPU must be inspected.

The check ships its own copy: ``envbuild.env.runtime`` puts the pynvml module of the
nvidia-ml-py envbuild depends on beside these files as ``_pynvml.py``, so the check works
whatever the environment holds and never shadows the environment's own ``pynvml`` for the
role's code. Run from an envbuild installation (no copy), it uses that installation's.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .verdict import Device, Driver, NoDriverError, Survey


class BindingMissingError(Exception):
    """Neither the shipped copy of pynvml nor an installed one can be imported."""


def binding() -> ModuleType:
    """The pynvml module: the shipped copy, else the installed one."""
    try:
        from . import _pynvml  # type: ignore[attr-defined]

        module: ModuleType = _pynvml
        return module
    except ImportError:
        pass
    try:
        import pynvml
    except ImportError as exc:
        raise BindingMissingError(
            f"the GPU check's NVML binding is missing ({exc}): this copy of envbuild's runtime "
            "files is incomplete; rebuild the image (or `envbuild env` again)"
        ) from None
    found: ModuleType = pynvml
    return found


def survey_nvml() -> Survey:
    """Ask NVML for the driver and every device. Raises NoDriverError when NVML (the driver's
    library) is missing, BindingMissingError when the Python binding is."""
    pynvml: Any = binding()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NoDriverError(str(exc)) from exc
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        driver = Driver(
            version=_text(pynvml.nvmlSystemGetDriverVersion()),
            cuda=(cuda // 1000, (cuda % 1000) // 10),
        )
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            devices.append(
                Device(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    compute_capability=(int(major), int(minor)),
                )
            )
        return Survey(driver=driver, devices=tuple(devices))
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
