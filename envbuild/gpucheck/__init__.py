"""Check the GPUs a container landed on against its role's needs, then exec the role's command.

It runs with the environment's python in every image, before Dask starts::

    python -m envbuild.gpucheck --compute-capability '>=8.0' --cuda 12.4 [--gpus 2] [--json]
    python -m envbuild.gpucheck [flags] -- dask worker tcp://scheduler:8786

Requirements come from a JSON file baked into the image (``$ENVBUILD_ROLE_FILE``, default
``/etc/envbuild/role.json``); flags override it. ``ENVBUILD_GPU_CHECK`` chooses the mode:
``enforce`` (default), ``warn`` (report, then start anyway) or ``skip`` (do not look).

Standalone by design: these modules import the standard library, ``pynvml`` (from the
``nvidia-ml-py`` distribution, only when a GPU must be inspected) and each other
(relatively), never the rest of envbuild; ``envbuild.env.runtime`` copies the folder into
every environment and image. ``requirements`` (what a role needs, the role file, exit
codes), ``verdict`` (pure checks), ``nvml`` (the hardware edge), ``command`` (the entry
point).

May import: (nothing of envbuild)
"""

from .command import load_requirements, main
from .nvml import BindingMissingError, binding, survey_nvml
from .requirements import (
    CANNOT_JUDGE,
    COMMAND_NOT_EXECUTABLE,
    COMMAND_NOT_FOUND,
    COMPUTE_CAPABILITY,
    DEFAULT_ROLE_FILE,
    DRIVER_FLOOR_BY_CUDA_MAJOR,
    DRIVER_TOO_OLD,
    MODES,
    NO_BINDING,
    NO_DRIVER,
    OK,
    TOO_FEW_GPUS,
    USAGE,
    ComputeCapability,
    RequirementError,
    Requirements,
    parse_cuda_version,
    read_role_file,
)
from .verdict import (
    Device,
    Driver,
    GpuResult,
    MigError,
    NoDriverError,
    Survey,
    Verdict,
    driver_problem,
    evaluate,
    render,
    to_json,
    visible_devices,
)

__all__ = [
    "CANNOT_JUDGE",
    "COMMAND_NOT_EXECUTABLE",
    "COMMAND_NOT_FOUND",
    "COMPUTE_CAPABILITY",
    "DEFAULT_ROLE_FILE",
    "DRIVER_FLOOR_BY_CUDA_MAJOR",
    "DRIVER_TOO_OLD",
    "MODES",
    "NO_BINDING",
    "NO_DRIVER",
    "OK",
    "TOO_FEW_GPUS",
    "USAGE",
    "BindingMissingError",
    "ComputeCapability",
    "Device",
    "Driver",
    "GpuResult",
    "MigError",
    "NoDriverError",
    "RequirementError",
    "Requirements",
    "Survey",
    "Verdict",
    "binding",
    "driver_problem",
    "evaluate",
    "load_requirements",
    "main",
    "parse_cuda_version",
    "read_role_file",
    "render",
    "survey_nvml",
    "to_json",
    "visible_devices",
]
