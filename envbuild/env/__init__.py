"""Environments: real conda prefixes made from the lock (``create``), checked against it
(``verify``), marked with the lock they hold (``stamp``), entered (``activate``). Archives
are checked before anything is installed from them (``archives``); every environment and
image gets envbuild's runtime files, the GPU check and the Dask guard (``runtime``).

May import: errors, files, gpucheck, spec, lock
"""
