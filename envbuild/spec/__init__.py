"""The spec: ``envbuild.yaml`` read defensively (``file``, ``yamldoc``) into a strict model
(``model``), with the vocabulary it is written in (``channels``, ``platforms``,
``matchspec``).

Imports: the standard library, PyYAML, pydantic (only ``model``, loaded lazily), and from
envbuild only ``errors``, ``files`` and the standalone ``gpucheck`` (its requirement grammar).
Never rattler: a spec is read and checked without a solver (``lock`` parses match specs with
rattler when it locks).
"""

#: The file a spec lives in unless told otherwise.
SPEC_FILE_NAME = "envbuild.yaml"
#: The roles of a Dask cluster, in the order they are shown.
ROLES = ("client", "scheduler", "worker")
