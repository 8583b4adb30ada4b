"""The spec: ``envbuild.yaml`` read defensively (``file``, ``yamldoc``) into a strict model
(``model``), with the vocabulary it is written in (``channels``, ``platforms``,
``matchspec``). A spec is read and checked without a solver: ``lock`` hands its match-spec
parser in when it locks.

May import: errors, files, gpucheck
"""

#: The file a spec lives in unless told otherwise.
SPEC_FILE_NAME = "envbuild.yaml"
#: The roles of a Dask cluster, in the order they are shown.
ROLES = ("client", "scheduler", "worker")
