"""An independent differential test of ``envbuild lock`` (issue 18).

- ``universe``: seeded random channels and specs (and the issue's three shapes), written as a
  ``file://`` channel of hand-written repodata plus an ``envbuild.yaml``.
- ``invariant``: a checker of the README's consistency invariant, on a lock file or on any
  set of solved targets.
- ``reference``: a brute-force reference on raw ``rattler.solve``: every target alone, then
  every assignment of version pins to the names the solutions contain.
- ``differential``: one case end to end: the generator, the reference, envbuild (through one
  adapter function) and the verdict.
- ``fuzz``: the command line (``python -m tests.exact.fuzz --cases 2000 --seed 1``).

Nothing here imports envbuild's resolver (``resolve.py``, ``consistency.py``): the point is a
second mind. envbuild is imported in exactly one place, ``differential.run_envbuild_lock``.
"""
