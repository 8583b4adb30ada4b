"""The demo's client: runs inside the client role's environment (dask and pandas, no envbuild).

    python demo_client.py SCHEDULER WORKERS      (SCHEDULER: tcp://HOST:PORT, or a scheduler file)

Waits for the workers, computes a dask.array reduction and a pandas groupby on a worker,
and, when the environment has the example's PyPI package (xarray, from a wheel), an xarray
reduction on a worker; asks every process which environment it runs (its envbuild stamp)
and which xarray it imports, and prints one JSON document on stdout.
"""

from __future__ import annotations

import json
import sys


def stamp() -> dict[str, object]:
    """This process's environment: the stamp envbuild wrote into its prefix."""
    import json as json_
    import pathlib
    import sys as sys_

    path = pathlib.Path(sys_.prefix) / "etc" / "envbuild" / "stamp.json"
    found = json_.loads(path.read_text()) if path.is_file() else {}
    keys = ("lock", "target", "variant", "platform", "roles")
    try:  # the example's PyPI package, imported in this process
        import xarray

        pypi: str | None = f"{xarray.__version__} {pathlib.Path(xarray.__file__).parent}"
    except ImportError:
        pypi = None
    return {"prefix": sys_.prefix, **{k: found.get(k) for k in keys}, "xarray": pypi}


def xarray_sum() -> list[int]:
    """An xarray reduction over conda's numpy, run on a worker."""
    import xarray

    data = xarray.DataArray([[0, 1, 2], [3, 4, 5]], dims=("x", "y"))
    return [int(v) for v in data.sum("x").values]


def groupby() -> dict[int, int]:
    """A pandas groupby, run on a worker."""
    import pandas as pd

    frame = pd.DataFrame({"key": [i % 3 for i in range(30)], "value": range(30)})
    return {int(k): int(v) for k, v in frame.groupby("key")["value"].sum().items()}


def main(scheduler: str, workers: int) -> None:
    import dask.array as da
    from dask.distributed import Client

    where = {"address": scheduler} if "://" in scheduler else {"scheduler_file": scheduler}
    with Client(**where, timeout="60s") as client:
        client.wait_for_workers(workers, timeout=120)
        guard = "not loaded"
        try:  # the environment's runtime copy (envbuild run, images): one line opts in
            import envbuild.dask

            envbuild.dask.check(client)
            guard = "one lock: client, scheduler and every worker"
        except ImportError:
            pass
        total = int(da.arange(1_000_000, chunks=100_000).sum().compute())
        grouped = client.submit(groupby, pure=False).result()
        processes = {"client": stamp(), "scheduler": client.run_on_scheduler(stamp)}
        processes.update({f"worker {a}": s for a, s in sorted(client.run(stamp).items())})
        pypi = None
        if processes["client"]["xarray"]:  # the environment has it: compute with it
            pypi = client.submit(xarray_sum, pure=False).result()
    result = {
        "array_sum": total,
        "groupby": grouped,
        "xarray_sum": pypi,
        "processes": processes,
        "guard": guard,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
