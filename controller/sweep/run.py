"""Running a sweep on Dask: grid search, or Bayesian search with asynchronous ask/tell."""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.controller.sweep.config import Log, SweepConfig, SweepFailedError
from fusetomo.controller.sweep.summary import _as_float, plot_results, summarize, write_tables
from fusetomo.controller.sweep.tables import Journal, _ok_rows, elements_of
from fusetomo.controller.sweep.task import Task, evaluate, make_task, point_key


# -- running ------------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[Any]:
    """A Dask client: to `scheduler` when given; else a local cluster, with one worker per
    GPU (dask-cuda) when GPUs and dask-cuda are there, otherwise `n_workers` processes of
    one thread each (default: the CPU count). Local clusters bind to 127.0.0.1."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    cluster: Any = None
    from fusetomo.solver.backend import gpu_available

    if n_workers is None and gpu_available():
        with contextlib.suppress(ImportError):  # without dask-cuda: CPU workers below
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(threads_per_worker=1, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0")
    if cluster is None:
        # One core per worker process: its CPU kernels run one thread each (else every
        # worker would start a thread per core, solver/backend.py).
        cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1,
                               threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0",
                               env={"FUSETOMO_THREADS": "1"})
    with cluster, Client(cluster) as client:
        yield client


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    points: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    submitted: int
    skipped: int


class _Runner:
    """Submits tasks, retries failures, journals every outcome."""

    def __init__(self, client: Any, journal: Journal, retries: int, log: Log) -> None:
        from distributed import as_completed

        self.client, self.journal, self.retries, self.log = client, journal, retries, log
        self.ac = as_completed([], with_results=False)
        self.futures: dict[Any, tuple[Task, int]] = {}
        self.failed: list[dict[str, Any]] = []
        self.submitted = 0

    def submit(self, task: Task, attempt: int = 1) -> None:
        fut = self.client.submit(evaluate, task, key=f"fusetomo-{task.key}-a{attempt}",
                                 pure=False)
        self.futures[fut] = (task, attempt)
        self.ac.add(fut)
        self.submitted += 1

    def _row(self, task: Task, attempt: int, status: str, **extra: Any) -> dict[str, Any]:
        return {"task_key": task.key, "cell": task.cell, "point": task.point,
                "replicate": task.replicate, "source": task.source, "status": status,
                "attempt": attempt, **task.params, **extra}

    def results(self) -> Iterator[tuple[Task, dict[str, Any]]]:
        """Finished tasks with their journalled row, as they complete; failures are
        journalled and retried, and ones out of retries are kept in `failed`."""
        for fut in self.ac:
            task, attempt = self.futures.pop(fut)
            if fut.status == "finished":
                row = self._row(task, attempt, "ok", **fut.result())
                self.journal.append(row)
                yield task, row
                continue
            try:
                err: BaseException = fut.exception()
            except BaseException as e:  # a cancelled future raises instead of returning
                err = e
            text = f"{type(err).__name__}: {err}"
            final = attempt > self.retries
            row = self._row(task, attempt, "failed" if final else "error", error=text)
            self.journal.append(row)
            if final:
                self.log(f"task {task.key} ({task.point}, {task.source}) FAILED after "
                         f"{attempt} attempts: {text}")
                self.failed.append(row)
            else:
                self.log(f"task {task.key} ({task.point}, {task.source}) failed on attempt "
                         f"{attempt}: {text}; retrying")
                self.submit(task, attempt + 1)


def _grid_points(cfg: SweepConfig, cell_values: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = list(cfg.space)
    combos = itertools.product(*(cfg.space[n] for n in names))
    return [{**cell_values, **dict(zip(names, c, strict=True))} for c in combos]


class _Bayes:
    """Asynchronous ask/tell for one map cell (skopt Optimizer, GP with Matern kernel and
    the GP-hedge acquisition, as in the 3D paper)."""

    def __init__(self, cfg: SweepConfig, cell: int, cell_values: Mapping[str, Any]) -> None:
        from skopt import Optimizer

        self.cfg, self.cell, self.cell_values = cfg, cell, dict(cell_values)
        self.names = list(cfg.space)
        dims = [cfg.space[n].to_skopt() for n in self.names]
        b = cfg.bayes
        self.opt = Optimizer(dims, base_estimator="GP", acq_func=b.acq_func,
                             n_initial_points=b.n_initial_points,
                             random_state=b.random_state + cell)
        self.asked = 0
        self.pending: dict[str, list[Any]] = {}   # point key -> x
        self.results: dict[str, dict[int, float]] = {}

    def values(self, x: Sequence[Any]) -> dict[str, Any]:
        vals = {n: (v.item() if hasattr(v, "item") else v)
                for n, v in zip(self.names, x, strict=True)}
        return {**self.cell_values, **vals}

    def tell(self, x: list[Any], y: float) -> None:
        self.opt.tell(x, y)

    def ask(self) -> list[Any] | None:
        if self.asked >= self.cfg.bayes.n_calls:
            return None
        self.asked += 1
        if not self.pending:
            return list(self.opt.ask())
        # Constant liar: the points in flight are told at the best value so far, on a copy,
        # so that the next point is not proposed on top of them.
        tmp = self.opt.copy(random_state=self.cfg.bayes.random_state + 7919 * self.asked)
        lie = min(self.opt.yi) if self.opt.yi else 0.0
        for xp in self.pending.values():
            tmp.tell(xp, lie)
        return list(tmp.ask())


def run_sweep(cfg: SweepConfig, out: str | Path, client: Any, *,
              log: Log = lambda s: print(s, file=sys.stderr)) -> SweepResult:
    """Run (or resume) the sweep into folder `out` on a Dask `client`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.toml").write_text(cfg.source)
    journal = Journal(out / "results.csv", elements_of(cfg), cfg.parameter_columns)
    done = _ok_rows(journal)
    runner = _Runner(client, journal, cfg.retries, log)
    reps = cfg.replicates
    skipped = 0
    if cfg.method == "grid":
        for ci, cell in enumerate(cfg.cells()):
            for values in _grid_points(cfg, cell):
                for r, src in reps:
                    task = make_task(cfg, ci, values, r, src)
                    if task.key in done:
                        skipped += 1
                    else:
                        runner.submit(task)
        log(f"sweep {cfg.name}: {runner.submitted} tasks submitted, {skipped} already done")
        for task, row in runner.results():
            log(f"  {task.point} [{task.source}]: <NRMSE> {float(row['nrmse_mean']):.4f}")
    else:
        skipped = _run_bayes(cfg, runner, done, reps, log)
    table = journal.rows()
    points = summarize(table, cfg)
    write_tables(out, cfg, journal.columns, table, points)
    try:
        plot_results(out / "nrmse_map.png", cfg, points)
    except Exception as e:  # a plot must not cost the results; say why it is missing
        log(f"no plot written: {type(e).__name__}: {e}")
    result = SweepResult(table, points, runner.failed, runner.submitted, skipped)
    if runner.failed:
        raise SweepFailedError(
            f"{len(runner.failed)} task(s) failed after {cfg.retries} retries: "
            + "; ".join(f"{r['point']} [{r['source']}]: {r['error']}" for r in runner.failed)
            + f" (see {out / 'results.csv'}; run the sweep again to retry them)")
    return result


def _run_bayes(cfg: SweepConfig, runner: _Runner, done: Mapping[str, dict[str, str]],
               reps: list[tuple[int, str]], log: Log) -> int:
    skipped = 0
    optimizers: list[_Bayes] = []
    waiting: dict[tuple[int, str], set[int]] = {}
    previous: dict[int, dict[str, dict[str, Any]]] = {}
    for row in done.values():  # points already evaluated, per cell, in journal order
        vals = {k: _as_float(row[k]) for k in cfg.space}
        previous.setdefault(int(row["cell"]), {}).setdefault(row["point"], vals)

    def submit_point(b: _Bayes, x: list[Any]) -> None:
        nonlocal skipped
        values = b.values(x)
        key = point_key({k: values[k] for k in cfg.varying})
        b.pending[key] = x
        b.results.setdefault(key, {})
        waiting[(b.cell, key)] = set()
        for r, src in reps:
            task = make_task(cfg, b.cell, values, r, src)
            if task.key in done:
                b.results[key][r] = float(done[task.key]["nrmse_mean"])
                skipped += 1
            else:
                waiting[(b.cell, key)].add(r)
                runner.submit(task)

    def finish_point(b: _Bayes, key: str) -> None:
        x = b.pending.pop(key)
        waiting.pop((b.cell, key), None)
        y = float(np.mean(list(b.results[key].values())))
        b.tell(x, y)
        log(f"  cell {b.cell} point {len(b.opt.yi)}: {key} -> <NRMSE> {y:.4f}")

    for ci, cell in enumerate(cfg.cells()):
        b = _Bayes(cfg, ci, cell)
        optimizers.append(b)
        for vals in previous.get(ci, {}).values():  # resume: replay the journal
            b.asked += 1
            submit_point(b, [vals[n] for n in b.names])
        for key in [k for k, w in waiting.items() if k[0] == ci and not w]:
            finish_point(b, key[1])
        while len(b.pending) < cfg.bayes.parallel:
            x = b.ask()
            if x is None:
                break
            submit_point(b, x)
            for key in [k for k, w in waiting.items() if k[0] == ci and not w]:
                finish_point(b, key[1])
    log(f"sweep {cfg.name}: bayes over {len(optimizers)} cell(s), {cfg.bayes.n_calls} "
        f"points each, {runner.submitted} tasks in flight, {skipped} results reused")
    for task, row in runner.results():
        b = optimizers[task.cell]
        key = task.point
        b.results[key][task.replicate] = float(row["nrmse_mean"])
        waiting[(task.cell, key)].discard(task.replicate)
        if waiting[(task.cell, key)]:
            continue
        finish_point(b, key)
        while len(b.pending) < cfg.bayes.parallel:
            x = b.ask()
            if x is None:
                break
            submit_point(b, x)
            for k in [k for k, w in waiting.items() if k[0] == b.cell and not w]:
                finish_point(b, k[1])
    return skipped
