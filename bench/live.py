"""Live-loop figures: load through the receive/record path, and per-tilt latency.

load     a fake instrument (a separate process) streams N tilts of S x S float32 (plus a
         chemical tilt of E element maps every K-th) as fast as loopback allows, at most
         `window` unacknowledged at a time, into the controller, which checks, records
         (flushed, fsync'd) and acknowledges each one. Reported: tilts lost or doubled (the
         run file's counts), messages/s and MB/s (first to last tilt received), the
         controller process' RSS high-water mark (getrusage) over its baseline, and the
         high-water marks that bound it. Solver off unless --reconstruct.
endurance  N HAADF tilts of S x S (1000 of 256^2 by default) through the real controller
         with its default parameters (the solver takes every tilt; HAADF-only, so it never
         iterates: what is measured is receiving, checking, recording and adding): the rate
         over the first and the last 100 tilts (from the run file's receive times; the end
         must keep at least 80 % of the start, issue 18), and the controller's resident
         memory sampled during the run against the data received (memory must grow only
         with the data).
latency  the time from a tilt's arrival at the controller to its updated reconstruction
         being published (k iterations, then status and orthoslices on the PUB socket),
         over a simulated nanocubes series at each size. The fake instrument sends the next
         tilt `--gap` s after the previous tilt's reconstruction was published (a
         microscope slower than the solver, so no queueing), while the controller iterates
         idly in between: the figure includes the wait for the idle iteration in flight.

    python bench/live.py load
    python bench/live.py endurance --tilts 1000 --side 256
    python bench/live.py latency --sizes 64 128 --device cpu
    python bench/live.py latency --sizes 256 --device gpu --elements 4

Figures are merged into bench/results/live.json (keyed by benchmark, device and size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "live.json"


# -- the fake instrument (in its own process) -------------------------------------------------
def _instrument_proc(conn: Any, spec: dict[str, Any]) -> None:
    """Stream the series described by `spec`; report stats through `conn`."""
    import zmq

    from fusetomo.adapters.protocol import (
        ACK,
        CHEM_TILT,
        HAADF_TILT,
        HELLO,
        SERIES_END,
        SERIES_START,
        decode,
        encode,
        make,
    )

    n, side, every, els = spec["tilts"], spec["side"], spec["chem_every"], spec["elements"]
    every = every if every > 0 else n + 1  # 0: HAADF only
    rng = np.random.default_rng(0)
    pool = [rng.random((side, side), dtype=np.float32) * 100 for _ in range(4)]
    angles = np.linspace(-89.0, 89.0, n)
    sid = "load-bench"
    msgs: list[list[bytes]] = [encode(make(
        SERIES_START, sid, 0, elements=els, Z={e: z for e, z in zip(els, spec["Z"],
                                                                   strict=True)},
        shape=[side, side], scheme={"haadf_angles": angles.tolist(),
                                    "chem_angles": angles[::every].tolist() if every <= n
                                    else []},
        dose_budget_e_per_A2=None, pixel_size_nm=0.5))]
    for i, a in enumerate(angles):
        msgs.append(encode(make(HAADF_TILT, sid, len(msgs), [pool[i % 4]], angle=float(a),
                                dose_e_per_A2=1.0)))
        if every <= n and i % every == 0:
            msgs.append(encode(make(CHEM_TILT, sid, len(msgs),
                                    [pool[(i + k) % 4] for k in range(len(els))],
                                    angle=float(a), elements=els, dose_e_per_A2=10.0)))
    n_haadf, n_chem = n, len(range(0, n, every)) if every <= n else 0
    msgs.append(encode(make(SERIES_END, sid, len(msgs), n_haadf=n_haadf, n_chem=n_chem)))
    payload = sum(len(f) for m in msgs for f in m[1:])

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.router_handover = True
    sock.sndhwm = spec["hwm"]
    sock.bind("tcp://127.0.0.1:0")
    conn.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    peer = None
    unacked: set[int] = set()
    acked: set[int] = set()
    next_i = 0
    sent = resent = 0
    t_first = t_last_ack = None
    window = spec["window"]
    deadline = time.monotonic() + spec["timeout"]
    while len(acked) < len(msgs) and time.monotonic() < deadline:
        while peer is not None and next_i < len(msgs) and len(unacked) < window:
            sock.send_multipart([peer, *msgs[next_i]], copy=False)
            t_first = t_first or time.perf_counter()
            unacked.add(next_i)
            next_i += 1
            sent += 1
        if not sock.poll(50):
            continue
        p, *frames = sock.recv_multipart()
        m = decode(frames)
        if m.type == HELLO:
            peer = p
            last = int(m.header["last_seq"])
            for s in sorted(unacked):
                if s <= last:
                    unacked.discard(s)
                    acked.add(s)
                else:  # resend what the controller has not recorded
                    sock.send_multipart([peer, *msgs[s]], copy=False)
                    resent += 1
        elif m.type == ACK:
            s = int(m.header["ack_seq"])
            unacked.discard(s)
            acked.add(s)
            t_last_ack = time.perf_counter()
    conn.send({"sent": sent, "resent": resent, "messages": len(msgs), "acked": len(acked),
               "payload_bytes": payload,
               "wall_s": None if t_first is None or t_last_ack is None
               else t_last_ack - t_first,
               "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    sock.close(0)
    ctx.term()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_load(args: argparse.Namespace) -> dict[str, Any]:
    from fusetomo.adapters.runfile import describe_run, read_run
    from fusetomo.controller.live import LiveController, LiveParams

    spec = {"tilts": args.tilts, "side": args.side, "chem_every": args.chem_every,
            "elements": ["Co", "O"][: args.load_elements] if args.load_elements <= 2
            else ["Co", "Cu", "O", "Au"][: args.load_elements],
            "window": args.window, "hwm": 1000, "timeout": 600.0}
    spec["Z"] = [{"Co": 27, "Cu": 29, "O": 8, "Au": 79}[e] for e in spec["elements"]]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_instrument_proc, args=(child, spec), daemon=True)
    proc.start()
    endpoint = parent.recv()
    with tempfile.TemporaryDirectory(prefix="fusetomo-load-", dir=args.tmp) as tmp:
        run_path = Path(tmp) / "run.h5"
        params = LiveParams(device="cpu", reconstruct=args.reconstruct,
                            iterations_per_tilt=1 if args.reconstruct else 0,
                            idle_iterations=False, final_iterations=0, timeout_s=120.0)
        ctrl = LiveController(endpoint, run_path, params)
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        code = ctrl.run()
        wall = time.perf_counter() - t0
        rss1 = _rss_mb()
        stats = parent.recv()
        proc.join(10)
        rec = read_run(run_path)
        d = describe_run(run_path)
        t_rx = np.concatenate([rec.t_received["haadf"], rec.t_received["chem"]])
        span = float(t_rx.max() - t_rx.min())
        size_mb = run_path.stat().st_size / 2**20
    n_msgs = args.tilts + len(range(0, args.tilts, args.chem_every))
    frame_b = args.side * args.side * 4
    out = {
        "tilts": args.tilts, "side": args.side, "chem_every": args.chem_every,
        "elements": spec["elements"], "reconstruct": args.reconstruct,
        "exit_code": code,
        "haadf_recorded": d["haadf_tilts"], "chem_recorded": d["chem_tilts"],
        "duplicates": d["duplicates"], "complete": d["complete"],
        "lost": n_msgs - (d["haadf_tilts"] + d["chem_tilts"]),
        "messages": n_msgs, "payload_mb": stats["payload_bytes"] / 2**20,
        "receive_span_s": span,
        "messages_per_s": (n_msgs - 1) / span if span > 0 else None,
        "mb_per_s": stats["payload_bytes"] / 2**20 / span if span > 0 else None,
        "controller_wall_s": wall,
        "instrument_first_send_to_last_ack_s": stats["wall_s"],
        "resent": stats["resent"],
        "run_file_mb": size_mb,
        "rss_baseline_mb": rss0, "rss_peak_mb": rss1, "rss_growth_mb": rss1 - rss0,
        "instrument_rss_peak_mb": stats["rss_peak_mb"],
        "window": args.window,
        "in_flight_bound_mb": args.window * frame_b * len(spec["elements"]) / 2**20,
        "zmq_hwm": {"instrument_router_sndhwm": 1000, "controller_dealer_rcvhwm": 1000,
                    "status_pub_sndhwm": 100},
    }
    print(f"load: {n_msgs} tilts of {args.side}x{args.side} ({out['payload_mb']:.1f} MB): "
          f"{out['lost']} lost, {out['duplicates']} doubled, "
          f"{out['messages_per_s']:.0f} msg/s, {out['mb_per_s']:.1f} MB/s; RSS peak "
          f"{rss1:.0f} MB (+{rss1 - rss0:.0f} MB over the baseline; in flight at most "
          f"{out['in_flight_bound_mb']:.0f} MB)")
    return out


# -- endurance: 1000 tilts, the rate and the memory over time --------------------------------------
def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_endurance(args: argparse.Namespace) -> dict[str, Any]:
    from fusetomo.adapters.runfile import describe_run, read_run
    from fusetomo.controller.live import LiveController, LiveParams

    spec = {"tilts": args.tilts, "side": args.side, "chem_every": 0, "elements": ["Co", "O"],
            "Z": [27, 8], "window": args.window, "hwm": 1000, "timeout": 1800.0}
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_instrument_proc, args=(child, spec), daemon=True)
    proc.start()
    endpoint = parent.recv()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:  # the controller's resident memory, twice a second
        while not stop.wait(0.5):
            samples.append((time.time(), _rss_now_mb()))

    with tempfile.TemporaryDirectory(prefix="fusetomo-endurance-", dir=args.tmp) as tmp:
        run_path = Path(tmp) / "run.h5"
        ctrl = LiveController(endpoint, run_path, LiveParams(device="cpu", timeout_s=120.0))
        rss0 = _rss_now_mb()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = ctrl.run()
        stop.set()
        sampler.join(5)
        parent.recv()
        proc.join(10)
        rec = read_run(run_path)
        d = describe_run(run_path)
    t = np.sort(rec.t_received["haadf"])
    k = min(100, len(t) // 4)
    start_rate = (k - 1) / float(t[k - 1] - t[0])
    end_rate = (k - 1) / float(t[-1] - t[-k])
    # Memory against the data received by then (every tilt is side^2 float32).
    frame_mb = args.side * args.side * 4 / 2**20
    rows = []
    for ts, mb in samples:
        n = int(np.searchsorted(t, ts))
        rows.append((n, n * frame_mb, mb - rss0))
    arr = np.asarray(rows) if rows else np.zeros((0, 3))
    fit = np.polyfit(arr[:, 1], arr[:, 2], 1) if len(arr) > 2 else [float("nan")] * 2
    quarters = {f"after_{q}_tilts": float(arr[np.searchsorted(arr[:, 0], q), 2])
                for q in (args.tilts // 4, args.tilts // 2, 3 * args.tilts // 4)
                if len(arr) and np.searchsorted(arr[:, 0], q) < len(arr)}
    out = {
        "tilts": args.tilts, "side": args.side, "exit_code": code,
        "recorded": d["haadf_tilts"], "duplicates": d["duplicates"],
        "lost": args.tilts - d["haadf_tilts"],
        f"rate_first_{k}_tilts_per_s": start_rate, f"rate_last_{k}_tilts_per_s": end_rate,
        "end_over_start": end_rate / start_rate,
        "data_mb": args.tilts * frame_mb,
        "rss_baseline_mb": rss0,
        "rss_growth_mb": {**quarters, "end": float(arr[-1, 2]) if len(arr) else None,
                          "peak": float(arr[:, 2].max()) if len(arr) else None},
        "rss_growth_per_data_mb": float(fit[0]),
        "rss_growth_intercept_mb": float(fit[1]),
        "samples": len(samples),
    }
    print(f"endurance: {args.tilts} HAADF tilts of {args.side}^2 ({out['data_mb']:.0f} MB): "
          f"{out['lost']} lost, {out['duplicates']} doubled; rate {start_rate:.1f} tilts/s "
          f"over the first {k}, {end_rate:.1f} over the last {k} "
          f"({100 * out['end_over_start']:.0f} %); memory +{out['rss_growth_mb']['end']:.0f} "
          f"MB at the end, {out['rss_growth_per_data_mb']:.2f} MB per MB of data")
    return out


# -- latency ---------------------------------------------------------------------------------
def bench_latency(size: int, args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    from fusetomo.adapters.protocol import (
        CHEM_TILT,
        HAADF_TILT,
        HELLO,
        SERIES_END,
        SERIES_START,
        decode,
        encode,
        make,
    )
    from fusetomo.adapters.transport import StatusSubscriber
    from fusetomo.controller.live import LiveController, LiveParams
    from fusetomo.simulators.forward import AcquisitionParams, TiltScheme, simulate
    from fusetomo.solver.fusion import FusionParams

    t_sim = time.perf_counter()
    specimen = "nanocubes"
    sim = simulate(specimen, size, TiltScheme((-60.0, 60.0), args.haadf_step, args.chem_step),
                   AcquisitionParams(oversample=1), seed=0)
    s = sim.series
    els = s.elements[: args.elements]
    t_sim = time.perf_counter() - t_sim
    sid = f"latency-{size}"
    chem_at = {round(float(a), 6): j for j, a in enumerate(s.common_chem_angles)}
    msgs = [make(SERIES_START, sid, 0, elements=els, Z={e: int(s.Z[e]) for e in els},
                 shape=list(s.shape), scheme={"haadf_angles": s.haadf_angles.tolist(),
                                              "chem_angles": list(chem_at)},
                 dose_budget_e_per_A2=None, pixel_size_nm=0.5, gamma=s.gamma,
                 background={e: float(s.background[e]) for e in els})]
    for i, a in enumerate(s.haadf_angles):
        msgs.append(make(HAADF_TILT, sid, len(msgs), [s.haadf[i]], angle=float(a),
                         dose_e_per_A2=1.0))
        j = chem_at.get(round(float(a), 6))
        if j is not None:
            msgs.append(make(CHEM_TILT, sid, len(msgs), [s.chem[e][j] for e in els],
                             angle=float(a), elements=els, dose_e_per_A2=10.0))
    n_h, n_c = len(s.haadf_angles), len(chem_at)
    msgs.append(make(SERIES_END, sid, len(msgs), n_haadf=n_h, n_chem=n_c))

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:0")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    with tempfile.TemporaryDirectory(prefix="fusetomo-latency-", dir=args.tmp) as tmp:
        params = LiveParams(device=args.device, iterations_per_tilt=args.iterations_per_tilt,
                            final_iterations=0, max_idle_iterations=args.max_idle,
                            timeout_s=300.0, fusion=FusionParams())
        ctrl = LiveController(endpoint, Path(tmp) / "run.h5", params)
        result: dict[str, Any] = {}
        th = threading.Thread(target=lambda: result.update(code=ctrl.run()), daemon=True)
        th.start()
        while ctrl.publisher is None:
            time.sleep(0.01)
        sub = StatusSubscriber(ctrl.publish_endpoint, ("event",), ctx=ctx)
        time.sleep(0.3)  # let the subscription reach the publisher
        peer = None
        while peer is None:
            if router.poll(1000):
                p, *frames = router.recv_multipart()
                if decode(frames).type == HELLO:
                    peer = p
        latencies: list[float] = []
        sent = {HAADF_TILT: 0, CHEM_TILT: 0}
        t0 = time.perf_counter()
        for m in msgs:
            router.send_multipart([peer, *encode(m)])
            if m.type not in (HAADF_TILT, CHEM_TILT):
                continue
            sent[m.type] += 1
            if not (sent[HAADF_TILT] and sent[CHEM_TILT]):
                continue  # nothing to reconstruct before both modalities arrived
            # Wait for this tilt's reconstruction to be published, then leave the
            # controller a gap in which it iterates idly.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                got = sub.recv(100)
                if got is None:
                    continue
                h = got[1].header
                if h.get("event") == "reconstruction_updated" and m.seq in h["tilt_seqs"]:
                    latencies.append(h["latency_s"][h["tilt_seqs"].index(m.seq)])
                    break
            time.sleep(args.gap)
        total = time.perf_counter() - t0
        th.join(120)
        sub.close()
        it_time = _iteration_time(ctrl)
    router.close(0)
    ctx.term()
    lat = np.asarray(latencies)
    out = {
        "size": size, "elements": els, "device": args.device,
        "haadf_tilts": n_h, "chem_tilts": n_c,
        "iterations_per_tilt": args.iterations_per_tilt, "gap_s": args.gap,
        "latency_s_median": float(np.median(lat)) if lat.size else None,
        "latency_s_p90": float(np.percentile(lat, 90)) if lat.size else None,
        "latency_s_max": float(lat.max()) if lat.size else None,
        "n_latencies": int(lat.size),
        "iteration_s_median": it_time,
        "series_wall_s": total, "simulate_s": t_sim, "exit_code": result.get("code"),
    }
    print(f"latency {size}^3 x {len(els)} elements on {args.device}: median "
          f"{out['latency_s_median']:.3f} s, p90 {out['latency_s_p90']:.3f} s over "
          f"{lat.size} tilts (k = {args.iterations_per_tilt}; one iteration "
          f"{it_time:.3f} s)")
    return out


def _iteration_time(ctrl: Any) -> float | None:
    """Median wall time of one fused iteration, measured after the run on its solver."""
    solver = ctrl.solver
    if solver is None or not solver.ready:
        return None
    times = []
    for _ in range(3):
        t = time.perf_counter()
        solver.step()
        if solver.device.id >= 0:
            import cupy

            cupy.cuda.Device().synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# -- main ------------------------------------------------------------------------------------
def _hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(AttributeError):
        info["affinity"] = len(os.sched_getaffinity(0))
    if device != "cpu":
        try:
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(0)
            info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) \
                else str(props["name"])
        except Exception as e:  # no GPU: recorded, not fatal
            info["gpu"] = f"unavailable ({e})"
    return info


def _merge(results: dict[str, Any], path: Path) -> None:
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    for k, v in results.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            old[k].update(v)
        else:
            old[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("load", "endurance", "latency", "all"))
    p.add_argument("--tilts", type=int, default=180)
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--chem-every", type=int, default=15)
    p.add_argument("--load-elements", type=int, default=2)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--reconstruct", action="store_true",
                   help="load: also add each tilt to the solver and iterate once")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    p.add_argument("--elements", type=int, default=4, help="latency: elements (<= 4)")
    p.add_argument("--iterations-per-tilt", type=int, default=3)
    p.add_argument("--max-idle", type=int, default=50)
    p.add_argument("--haadf-step", type=float, default=10.0)
    p.add_argument("--chem-step", type=float, default=30.0)
    p.add_argument("--gap", type=float, default=0.3,
                   help="latency: seconds between a tilt's publication and the next tilt")
    p.add_argument("--tmp", default=None, help="folder for the temporary run files")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    cmd = "python bench/live.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.what in ("load", "all"):
        load = bench_load(args)
        key = "reconstruct" if args.reconstruct else "record_only"
        results["load"] = {key: {**load, "command": cmd, "hardware": _hardware("cpu")}}
    if args.what == "endurance":
        results["endurance"] = {f"{args.tilts}x{args.side}": {
            **bench_endurance(args), "command": cmd, "hardware": _hardware("cpu")}}
    if args.what in ("latency", "all"):
        lat = {}
        for n in args.sizes:
            lat[f"{args.device}-{n}"] = {**bench_latency(n, args), "command": cmd,
                                         "hardware": _hardware(args.device)}
        results["latency"] = lat
    _merge(results, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
