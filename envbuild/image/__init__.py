"""Role images: what goes into each, decided from the lock alone (``plan``, pure), the layers
written from a staged environment (``staging``), built on an engine (``build`` through
``engine``, the only door to docker), looked up in a registry (``registry``), and the CI
build matrix (``matrix``).

May import: errors, files, gpucheck, spec, lock, env
"""
