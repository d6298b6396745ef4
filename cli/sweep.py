"""`fusetomo sweep`: parameter sweeps of the fused solver on Dask (docs/scaling.md).

    fusetomo sweep CONFIG.toml [--out DIR] [--scheduler tcp://HOST:PORT] [--workers N]

`sweep` exit status: 0 when every task succeeded, 1 when some still failed after their
retries (they are in DIR/results.csv; running the same command again retries them and
skips the finished ones), 2 for a bad sweep file or value.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fusetomo.cli.argtypes import positive_int


def _error(text: str) -> int:
    print(f"fusetomo: error: {text}", file=sys.stderr)
    return 2


def cmd_sweep(args: argparse.Namespace) -> int:
    from fusetomo.controller.sweep import (
        SweepConfigError,
        SweepFailedError,
        dask_client,
        load_config,
        run_sweep,
    )

    try:
        cfg = load_config(args.config)
    except SweepConfigError as e:
        return _error(str(e))
    out = Path(args.out) if args.out else Path(f"sweep-{cfg.name}")
    t0 = time.perf_counter()
    try:
        with dask_client(args.scheduler, args.workers) as client:
            print(f"sweep {cfg.name}: Dask scheduler {client.scheduler.address}, "
                  f"{len(client.scheduler_info()['workers'])} workers", file=sys.stderr)
            res = run_sweep(cfg, out, client)
    except SweepConfigError as e:
        return _error(str(e))
    except SweepFailedError as e:
        print(f"fusetomo: sweep incomplete: {e}", file=sys.stderr)
        return 1
    best = {}
    for p in res.points:
        best.setdefault(p["cell"], p)  # points are sorted by cell, then <NRMSE>
    summary = {"name": cfg.name, "out": str(out), "tasks_run": res.submitted,
               "tasks_reused": res.skipped, "points": len(res.points),
               "elapsed_s": time.perf_counter() - t0,
               "best": [{k: v for k, v in b.items() if k != "point"} for b in best.values()]}
    if args.json:
        print(json.dumps(summary))
    else:
        for b in best.values():
            print(f"cell {b['cell']}: best <NRMSE> {b['nrmse_mean']:.4f} "
                  f"± {b['nrmse_std']:.4f} at {b['point']}")
        print(f"wrote {out}/results.csv, results.h5, points.csv, nrmse_map.png "
              f"({res.submitted} tasks run, {res.skipped} reused, "
              f"{summary['elapsed_s']:.0f} s)")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help="parameter sweep of the fused solver on Dask")
    p.add_argument("config", help="sweep file (.toml; see docs/scaling.md)")
    p.add_argument("--out", default=None,
                   help="results folder (default sweep-NAME); an existing one is resumed")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://HOST:PORT or tls://...); default: "
                        "a local cluster on 127.0.0.1")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local cluster: this many one-thread worker processes (default: one "
                        "per GPU with dask-cuda, else one per CPU core)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_sweep)
