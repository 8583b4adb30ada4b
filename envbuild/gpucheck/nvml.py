"""NVML, the only hardware edge: the driver and every device, through ``pynvml`` (from the
``nvidia-ml-py`` distribution, imported only when a GPU must be inspected)."""

from __future__ import annotations

from .verdict import Device, Driver, NoDriverError, Survey


def survey_nvml() -> Survey:
    """Ask NVML for the driver and every device. Raises NoDriverError when NVML is missing."""
    try:
        import pynvml
    except ImportError as exc:  # the image lacks nvidia-ml-py: as good as no driver
        raise NoDriverError(f"pynvml is not installed ({exc})") from exc
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
