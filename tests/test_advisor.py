"""The spectroscopy advisor: policies, predicted gains, and the live loop that follows them
(auto and manual), against the offline policy run."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from fusetomo.adapters.instrument.plans import make_plan
from fusetomo.adapters.runfile import read_run, read_snapshot
from fusetomo.adapters.transport import OperatorClient, OperatorError, StatusSubscriber
from fusetomo.controller.advisor import (
    ACQUIRE,
    STOP,
    WAIT,
    AdaptiveAdvisor,
    AdvisorError,
    AdvisorParams,
    RandomPolicy,
    SeriesState,
    UniformPolicy,
    make_policy,
)
from fusetomo.controller.coverage import gap
from fusetomo.controller.live import LiveParams
from fusetomo.controller.live.advice import AdviceDesk, AdviceParams
from fusetomo.controller.policyrun import PolicyRunParams, plan_and_series, run_policy
from fusetomo.solver.design import candidate_gains
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.metrics import nrmse
from tests.live_fixtures import controller_thread, instrument_thread, wait_for

ANGLES = [float(a) for a in np.arange(-60, 61, 6.0)]  # 21 tilts


def _state(angle: float, taken: list[float], remaining: list[float]) -> SeriesState:
    return SeriesState(angle=angle, tilt_seq=0, remaining=remaining, chem_angles=taken,
                       chem_dose_used=len(taken) * 2.0, chem_dose_per_map=2.0)


def test_uniform_policy_spreads_its_maps_evenly_and_follows_them():
    pol = UniformPolicy(AdvisorParams(chem_maps=4), ANGLES)
    # centres of four equal quarters of 21 tilts: indices 2, 7, 13, 18
    assert pol.targets == [-48.0, -18.0, 18.0, 48.0]
    assert pol.advise(None, _state(-48.0, [], ANGLES[3:])).action == ACQUIRE
    adv = pol.advise(None, _state(-42.0, [-48.0], ANGLES[4:]))
    assert adv.action == WAIT and adv.best_angle == -18.0
    done = pol.advise(None, _state(54.0, [-48, -18, 18, 48], ANGLES[-1:]))
    assert done.action == STOP and "4 of 4 maps" in done.reason


def test_random_policy_is_seeded_and_dose_budget_stops():
    a = RandomPolicy(AdvisorParams(chem_maps=5, seed=3), ANGLES).targets
    b = RandomPolicy(AdvisorParams(chem_maps=5, seed=3), ANGLES).targets
    c = RandomPolicy(AdvisorParams(chem_maps=5, seed=4), ANGLES).targets
    assert a == b != c and len(set(a)) == 5 and set(a) <= set(ANGLES)
    # 5 e/A^2 of spectroscopy at 2 per map: two maps, then stop.
    pol = make_policy("adaptive", AdvisorParams(chem_dose_budget=5.0), ANGLES)
    adv = pol.advise(None, _state(0.0, [-30.0, 30.0], ANGLES))
    assert adv.action == STOP and "dose" in adv.reason


def test_bad_advisor_parameters_are_named():
    with pytest.raises(AdvisorError, match="chem_maps"):
        AdvisorParams(chem_maps=0)
    with pytest.raises(AdvisorError, match="metric"):
        AdvisorParams(metric="fisher")  # type: ignore[arg-type]
    with pytest.raises(AdvisorError, match="policy"):
        make_policy("greedy", AdvisorParams(chem_maps=2), ANGLES)
    with pytest.raises(AdvisorError, match="needs a number of maps"):
        UniformPolicy(AdvisorParams(), ANGLES)


@pytest.fixture(scope="module")
def small_sim():
    p = PolicyRunParams(size=20, tilt_range=(-60.0, 60.0), haadf_step=6.0, seed=1,
                        iterations_per_tilt=2, final_iterations=6)
    return p, plan_and_series(p)


def _solver(sim, chem_idx):
    s = sim.series
    sv = FusedSolver(*s.shape[::-1], s.elements, [s.Z[e] for e in s.elements],
                     FusionParams(gamma=s.gamma or 1.7),
                     background=[s.background[e] for e in s.elements])
    sv.add_haadf(s.haadf_angles, s.haadf)
    ca = s.common_chem_angles
    sv.add_chem(ca[chem_idx], {e: s.chem[e][chem_idx] for e in s.elements})
    sv.run(15)
    return sv


def test_predicted_gain_falls_as_maps_are_added(small_sim):
    _, (_, sim) = small_sim
    n = len(sim.series.common_chem_angles)
    few = _solver(sim, [n // 2])
    many = _solver(sim, [2, n // 2 - 3, n // 2, n // 2 + 3, n - 3])
    from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error

    cand = [-39.0, 15.0]
    g = {}
    for name, sv in (("few", few), ("many", many)):
        std, _ = estimate_std_error(sv, UncertaintyParams(mode="cheap"))
        g[name] = candidate_gains(sv, cand, metric="jacobi", std=std)
    assert np.all(g["few"].gain > 0) and np.all(np.isfinite(g["many"].gain))
    # Five maps leave less to learn at every candidate than one does.
    assert np.all(g["many"].total < 0.8 * g["few"].total)
    # sampled metric: posterior samples of the accurate mode give positive gains too
    std, st = estimate_std_error(few, UncertaintyParams(mode="accurate", probes=2,
                                                        probe_batch=2, cg_iterations=10))
    gs = candidate_gains(few, cand, metric="sampled", samples=st.solutions)
    assert gs.gain.shape == (2, len(few.elements)) and np.all(gs.gain > 0)
    with pytest.raises(ValueError, match="samples"):
        candidate_gains(few, cand, metric="sampled")


def test_adaptive_run_respects_budget_and_spacing_and_scores(small_sim):
    p, prep = small_sim
    order, _sim = prep
    params = AdvisorParams(chem_maps=4, stop_gain=0.0)
    res = run_policy("adaptive", params, p, prep)
    taken = res.chem_angles
    # Without the stop rule, an equal count: exactly the budget.
    assert len(taken) == 4
    adv = AdaptiveAdvisor(params, order)
    gaps = np.diff(sorted(taken))
    assert np.all(gaps >= adv.spacing(4) - 1e-6), (taken, adv.spacing(4))
    # Coverage: the largest gap (ends counted double) within the limit of 4 maps.
    assert gap(taken, min(order), max(order)) <= adv.limit(4) + 1e-6
    # Nothing to predict from before the first map: it goes where even spacing puts one.
    first_target = next(a for a in order if a in UniformPolicy(params, order).targets)
    assert taken[0] == first_target
    assert all(a.action == WAIT for a in res.advices[:order.index(first_target)])
    now = run_policy("adaptive", AdvisorParams(chem_maps=4, stop_gain=0.0,
                                               first_map="now"), p, prep)
    assert now.chem_angles[0] == order[0]
    red = [a.variance_reduction for a in res.advices if a.variance_reduction]
    assert red and all(0 < v < 1 for d in red for v in d.values())
    pred = [a.predicted_nrmse for a in res.advices if a.predicted_nrmse is not None]
    assert pred and all(0 < v < 1 for v in pred)
    assert len(res.advices) == len(order)
    # Every decision followed its advice, and the score is the truth's NRMSE.
    assert all((a.decision == "acquire") == (a.action == ACQUIRE) for a in res.advices)
    assert 0 < res.nrmse_mean < 1.2
    uni = run_policy("uniform", AdvisorParams(chem_maps=4), p, prep)
    assert uni.chem_angles == sorted(UniformPolicy(AdvisorParams(chem_maps=4),
                                                   order).targets, key=order.index)


def test_advice_desk_answers():
    plan = make_plan("sequential", (-30.0, 30.0), 10.0, 10.0)
    header = {"scheme": plan.as_header(), "holds_for_advice": True,
              "chem_dose_e_per_A2": 2.0}
    desk = AdviceDesk(AdviceParams(mode="manual", policy="uniform",
                                   advisor=AdvisorParams(chem_maps=2)), header)
    adv = desk.advise(None, angle=-30.0, tilt_seq=1, recorded_haadf=[-30.0],
                      chem_angles=[], chem_dose_used=0.0)
    with pytest.raises(ValueError, match="not the one waiting"):
        desk.check_answer("accept", adv.id + 1)
    assert desk.decide("skip").decision == "continue"
    with pytest.raises(ValueError, match="no advice is waiting"):
        desk.check_answer("force", None)
    adv = desk.advise(None, angle=-20.0, tilt_seq=2, recorded_haadf=[-30.0, -20.0],
                      chem_angles=[], chem_dose_used=0.0)
    assert desk.decide("force").decision == "acquire" and adv.answer == "force"


LIVE = {"size": 16, "tilt_range": (-60.0, 60.0), "haadf_step": 12.0, "chem_step": 60.0,
        "seed": 3}


def test_live_auto_advice_matches_the_offline_policy_run(tmp_path):
    """The instrument holds at each tilt, the controller's adaptive advisor decides; with a
    strict schedule the live run takes the same spectrum images and ends with the same
    volumes as the offline policy run on the same simulated series."""
    advisor = AdvisorParams(chem_maps=3, stop_gain=0.0)
    params = LiveParams(device="cpu", iterations_per_tilt=2, idle_iterations=False,
                        interleave=False, final_iterations=4, heartbeat_s=0.3,
                        advice=AdviceParams(mode="auto", policy="adaptive", advisor=advisor))
    run = tmp_path / "run.h5"
    got = []
    with instrument_thread(**LIVE, hold_for_advice=True) as inst, \
            controller_thread(inst.endpoint, run, params) as (ctrl, result):
        wait_for(lambda: ctrl.publisher is not None, 10, "the status socket")
        sub = StatusSubscriber(ctrl.publish_endpoint, ("advice", "slices"))
        deadline = time.monotonic() + 120
        try:
            while "code" not in result and "error" not in result:
                assert time.monotonic() < deadline, "the live run did not finish"
                m = sub.recv(100)
                if m is not None:
                    got.append(m)
        finally:
            sub.close()
    assert result.get("code") == 0, result
    rec = read_run(run)
    live_chem = sorted(float(a) for a in rec.series.common_chem_angles)
    advices = [ev for ev in rec.events if ev["kind"] == "advice"]
    decisions = [ev for ev in rec.events if ev["kind"] == "advice_decision"]
    assert len(advices) == len(decisions) == rec.series.haadf.shape[0]
    assert sum(d["decision"] == "acquire" for d in decisions) == len(live_chem)
    # A spectrum image at a held tilt re-uses that tilt's HAADF image (not sent twice).
    assert rec.series.haadf.shape[0] == len(set(rec.series.haadf_angles.tolist()))

    offline_p = PolicyRunParams(specimen="nanocubes", size=16, seed=3,
                                tilt_range=(-60.0, 60.0), haadf_step=12.0,
                                iterations_per_tilt=2, final_iterations=4)
    off = run_policy("adaptive", advisor, offline_p)
    assert sorted(off.chem_angles) == live_chem
    _, live = read_snapshot(run)
    _order, sim = plan_and_series(offline_p)
    for e in live:
        assert nrmse(live[e], sim.truth[e]) == pytest.approx(off.nrmse[e], rel=1e-4)
    # The cheap standard errors are recorded with the snapshots.
    _, std = read_snapshot(run, group="std_error")
    assert set(std) == set(live)
    assert all(std[e].shape == live[e].shape and np.all(std[e] > 0) for e in std)
    topics = {t for t, _ in got}
    assert "advice" in topics
    sl = [m.header for t, m in got if t == "slices" and "std_slices" in m.header]
    assert sl and set(sl[-1]["std_slices"]) == set(rec.series.elements)


def test_live_manual_advice_operator_answers(tmp_path):
    """Manual mode: each advice waits for the operator, who forces a spectrum image at the
    first tilt and skips every other advice; a bad answer is rejected by name."""
    params = LiveParams(device="cpu", iterations_per_tilt=1, idle_iterations=False,
                        final_iterations=2, heartbeat_s=0.3,
                        advice=AdviceParams(mode="manual", policy="uniform",
                                            advisor=AdvisorParams(chem_maps=2)))
    run = tmp_path / "run.h5"
    answered: list[tuple[int, str]] = []
    with instrument_thread(**LIVE, hold_for_advice=True, auto=False) as inst, \
            controller_thread(inst.endpoint, run, params) as (ctrl, result):
        wait_for(lambda: ctrl.run_file is not None, 10, "the series start")
        sub = StatusSubscriber(ctrl.publish_endpoint, ("advice",))
        op = OperatorClient(ctrl.operator_endpoint)
        time.sleep(0.3)  # the subscription reaches the publisher
        op.send("resume")  # the instrument waited, paused, until now
        deadline = time.monotonic() + 120
        try:
            while "code" not in result and "error" not in result:
                assert time.monotonic() < deadline, "the live run did not finish"
                m = sub.recv(100)
                if m is None:
                    continue
                adv = m[1].header["advice"]
                if adv["decision"] is not None:
                    continue
                if not answered:
                    with pytest.raises(OperatorError, match="not the one waiting"):
                        op.send("accept", advice_id=adv["id"] + 7)
                    op.send("force")
                    answered.append((adv["id"], "force"))
                else:
                    op.send("skip", advice_id=adv["id"])
                    answered.append((adv["id"], "skip"))
        finally:
            sub.close()
            op.close()
    assert result.get("code") == 0, result
    rec = read_run(run)
    assert rec.series.common_chem_angles.size == 1  # only the forced one
    dec = [ev for ev in rec.events if ev["kind"] == "advice_decision"]
    assert [(d["advice_id"], d["answer"]) for d in dec] == answered
    ops = [ev for ev in rec.events if ev["kind"] == "operator"]
    assert any(o["status"] == "rejected" for o in ops)


@pytest.mark.slow
def test_demo_policy_json(tmp_path):
    """`fusetomo demo --policy uniform --chem-maps 2 --json`: the instrument holds, the
    controller's policy decides, and the summary has the issue's keys."""
    import json
    import subprocess

    from fusetomo.cli.children import fusetomo_argv

    out = tmp_path / "demo"
    proc = subprocess.run(
        fusetomo_argv("demo", "--out", str(out), "--size", "16", "--speed", "1e4",
                      "--tilt-range", "-60", "60", "--haadf-step", "12", "--chem-step", "60",
                      "--final-iterations",
                      "5", "--device", "cpu", "--policy", "uniform", "--chem-maps", "2",
                      "--seed", "3", "--json", "--quiet"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["policy"] == "uniform" and summary["chem_tilts"] == 2
    assert summary["haadf_tilts"] == 11 and summary["advices"] == 11
    plan = make_plan("sequential", (-60.0, 60.0), 12.0, 60.0).haadf_angles
    assert sorted(summary["chem_angles"]) == UniformPolicy(AdvisorParams(chem_maps=2),
                                                           plan).targets
    assert 0 < summary["nrmse_mean"] < 1.5
    bad = subprocess.run(fusetomo_argv("demo", "--out", str(tmp_path / "x"), "--policy",
                                       "random", "--quiet"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--chem-maps" in bad.stderr


def test_bad_operator_messages_and_hold_settings_are_named(tmp_path):
    from fusetomo.adapters.protocol import OPERATOR, ProtocolError, decode, encode, make
    from fusetomo.simulators.instrument import InstrumentError, InstrumentParams

    with pytest.raises(ProtocolError, match="'dance'") as e:
        decode(encode(make(OPERATOR, "*", 0, action="dance", id=1)))
    assert e.value.code == "unknown_action"
    with pytest.raises(ProtocolError, match="advice_id") as e:
        decode(encode(make(OPERATOR, "*", 0, action="accept", id=2)))
    assert e.value.code == "missing_field"
    # force needs no advice id
    assert decode(encode(make(OPERATOR, "*", 0, action="force", id=3))).header["id"] == 3
    with pytest.raises(InstrumentError, match="hold_for_advice needs a simulated series"):
        InstrumentParams(source=tmp_path / "x.h5", hold_for_advice=True)
    with pytest.raises(InstrumentError, match="hold_timeout_s"):
        InstrumentParams(hold_timeout_s=-1.0)


def test_operator_channel_refuses_bad_answers_and_records_nothing_wrong(tmp_path):
    """Without an advisor, answers are refused by name; the series is recorded in full."""
    params = LiveParams(device="cpu", iterations_per_tilt=1, idle_iterations=False,
                        final_iterations=1, heartbeat_s=0.3)
    run = tmp_path / "run.h5"
    with instrument_thread(**LIVE, auto=False) as inst, \
            controller_thread(inst.endpoint, run, params) as (ctrl, result):
        wait_for(lambda: ctrl.run_file is not None, 10, "the series start")
        op = OperatorClient(ctrl.operator_endpoint)
        try:
            with pytest.raises(OperatorError, match="advisor is off"):
                op.send("accept", advice_id=1)
            # decode-level refusal: an error reply names the action
            with pytest.raises(OperatorError, match="unknown_action"):
                op.send("dance")
            op.send("resume")
        finally:
            op.close()
        wait_for(lambda: "code" in result or "error" in result, 120, "the series end")
    assert result.get("code") == 0, result
    rec = read_run(run)
    assert rec.complete and rec.series.haadf.shape[0] == 11
    ops = [ev for ev in rec.events if ev["kind"] == "operator"]
    assert [o["status"] for o in ops] == ["rejected", "done"]


# -- issue 16: the stop rule, coverage, the plan's allowance ------------------------------------
def test_stop_rule_plans_the_maps_whose_next_would_gain_less_than_the_threshold():
    """The next map's gain 1 - sqrt(K / (K + 1)) (Fisher information adds up): the plan is
    the smallest K whose (K+1)-th map gains less than stop_gain, within the cap."""
    from fusetomo.controller.stoprule import StopRule, next_map_gain

    gains = [next_map_gain(k) for k in range(1, 30)]
    assert all(a > b for a, b in itertools.pairwise(gains))
    assert next_map_gain(3) == pytest.approx(1 - np.sqrt(3 / 4))
    rule = StopRule(AdvisorParams())  # default threshold 5.5 %
    k = rule.plan(0, 16)
    assert next_map_gain(k) < 0.055 <= next_map_gain(k - 1) and k == 9
    assert rule.plan(0, 5) == 5  # the cap wins
    assert StopRule(AdvisorParams(stop_gain=0.0)).plan(2, 16) == 16  # no stop rule
    assert StopRule(AdvisorParams(stop_gain=0.5, min_maps=4)).plan(0, 16) == 4
    assert rule.plan(11, 16) == 11  # never fewer than taken
    # the posterior's level scales as sqrt(K_now / K) from what it observed
    rule.observe(0.2, 4)
    assert rule.predicted(16) == pytest.approx(0.1)


@pytest.mark.parametrize("scheme", ["sequential", "dose-symmetric"])
def test_generous_budget_stops_early_with_the_range_covered(scheme):
    """A budget of 16 over +-60 deg: the advisor plans 9, spreads them over the whole range
    (the largest gap within the coverage limit: never all on one side), and its stop
    message names the quantity and its value."""
    p = PolicyRunParams(size=16, tilt_range=(-60.0, 60.0), haadf_step=4.0, seed=2,
                        scheme=scheme, iterations_per_tilt=1, final_iterations=2)
    prep = plan_and_series(p)
    order = prep[0]
    res = run_policy("adaptive", AdvisorParams(chem_maps=16), p, prep)
    taken = sorted(res.chem_angles)
    adv = AdaptiveAdvisor(AdvisorParams(chem_maps=16), order)
    assert len(taken) == 9
    assert gap(taken, -60.0, 60.0) <= adv.limit(9) + 1e-6, taken
    assert min(taken) < -30 and max(taken) > 30
    stops = [a for a in res.advices if a.action == STOP]
    if stops:  # the 9th map may be the series' last tilt
        assert "lower the predicted <NRMSE> by 5.1 %" in stops[0].reason
        assert stops[0].chem_maps_allowed == 16 and stops[0].chem_maps_planned == 9
    assert all(a.chem_maps_planned == 9 for a in res.advices)


def test_without_a_budget_the_plans_maps_are_the_allowance():
    """`planned_maps` (the plan's spectrum images, set by the controller from the series
    start) caps every policy when no budget is given, and is what the advice reports."""
    plan = make_plan("sequential", (-60.0, 60.0), 6.0, 30.0)
    order = plan.haadf_angles
    params = AdvisorParams(planned_maps=5, stop_gain=0.0)
    pol = make_policy("adaptive", params, order)
    assert pol.allowed(2.0) == 5
    done = pol.advise(None, _state(60.0, [-60.0, -30.0, 0.0, 30.0, 54.0], []))
    assert done.action == STOP and "5 of the plan's 5 maps" in done.reason
    header = {"scheme": plan.as_header(), "holds_for_advice": True,
              "chem_dose_e_per_A2": 2.0}
    desk = AdviceDesk(AdviceParams(mode="auto", policy="adaptive"), header)
    adv = desk.advise(None, angle=-60.0, tilt_seq=1, recorded_haadf=[-60.0],
                      chem_angles=[], chem_dose_used=0.0)
    assert adv.chem_maps_allowed == len(plan.chem_angles) == 5
