"""The live controller's two timing figures (controller/live/timing.py): the solver's time
on each tilt and how far the published reconstruction is behind the newest tilt, against
hand-computed schedules."""

from __future__ import annotations

from fusetomo.controller.live.timing import TiltTiming, lag_of, timing_summary


def test_processing_excludes_the_wait_behind_earlier_tilts():
    """Tilts arrive at t = 0, 1, 2 s; the solver publishes them at 0.5, 3.0 and 4.0 s: it
    fell behind at the second. Processing: 0.5, 3.0 - 1.0 = 2.0 (it started on arrival), and
    4.0 - 3.0 = 1.0 (it could only start once the second was published), while the latency
    (arrival -> published) of the third is 2.0 s."""
    t = TiltTiming()
    assert t.settled(0.5, [0.0], []) == [0.5]  # the second has not arrived yet
    assert (t.lag_tilts, t.lag_s) == (0, 0.0)
    assert t.settled(3.0, [1.0], [2.0]) == [2.0]
    assert (t.lag_tilts, t.lag_s) == (1, 1.0)  # the third has waited since 2.0 s
    assert t.settled(4.0, [2.0], []) == [1.0]
    assert (t.lag_tilts, t.lag_s) == (0, 0.0)
    assert t.processing_s == 1.0 and t.history == [0.5, 2.0, 1.0]


def test_lag_of_the_oldest_waiting_tilt():
    assert lag_of(10.0, []) == (0, 0.0)
    assert lag_of(10.0, [7.5, 9.0, 9.5]) == (3, 2.5)


def test_timing_summary_from_recorded_events():
    events = [{"kind": "latency", "seq": i, "latency_s": lat, "processing_s": pr,
               "lag_s": lag, "lag_tilts": n}
              for i, (lat, pr, lag, n) in enumerate([(0.5, 0.5, 0.0, 0), (2.0, 2.0, 1.0, 1),
                                                     (2.0, 1.0, 0.0, 0)])]
    events.append({"kind": "advice", "latency_s": 99.0})  # not a latency event
    s = timing_summary(events)
    assert s["processing_s_median"] == 1.0 and s["latency_s_median"] == 2.0
    assert s["lag_s_max"] == 1.0 and s["lag_tilts_max"] == 1 and s["lag_s_median"] == 0.0
    assert timing_summary([])["processing_s_median"] is None
