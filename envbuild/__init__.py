"""envbuild: one locked software environment for every role of a Dask cluster."""

__version__ = "0.1.0"
