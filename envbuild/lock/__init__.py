"""The lock: a spec resolved into ONE environment for every role, variant and platform.

``locking`` (the verb: lock, check, locate the lock in use) plans targets from the spec
(``variants``), solves and aligns them (``resolve``) under the invariant (``consistency``),
writes the lock file (``lockfile``), shows it (``report``) and exports it (``exports``,
``condalock``). ``conda`` is the only door to rattler (its installs and downloads run in
a child process: ``isolated``), ``condalock`` the only one to conda_lock.

May import: errors, files, gpucheck, spec
"""
