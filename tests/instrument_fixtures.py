"""Fakes for the instrument-side tests: a microscope that answers at once (or blocks until
aborted, or fails once), a minimal controller over a real DEALER, and instrument sessions
serving in a thread (joined, their errors re-raised, on leaving the block)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fusetomo.adapters.instrument import (
    AcquisitionAbortedError,
    HaadfScan,
    InstrumentSession,
    SpectrumImage,
)
from fusetomo.adapters.nion import NionAdapterError, NionTomoAdapter, NionTomoConfig
from fusetomo.adapters.protocol import (
    ACK,
    COMMAND,
    ERROR,
    HAADF_TILT,
    HELLO,
    SERIES_START,
    Message,
    decode,
    make,
)
from fusetomo.adapters.transport import ControllerClient
from fusetomo.simulators.instrument import InstrumentParams, SimulatedInstrument

# The simulated instrument's small series: 21 HAADF + 5 chemical tilts in 26 steps of 16^2.
FAST = {"size": 16, "speed": 1e4, "tilt_range": (-60.0, 60.0), "haadf_step": 6.0,
        "chem_step": 30.0, "seed": 3}


class FakeMicroscope:
    """A `Microscope` that returns known images instantly (or blocks until aborted)."""

    def __init__(self, size: int = 8, *, block: bool = False, fail_at: float | None = None):
        self.size = size
        self.angle = 0.0
        self.block = block
        self.fail_at = fail_at
        self.aborted = threading.Event()
        self.moves: list[float] = []
        self.energy = np.arange(400.0, 1200.0, 1.0)

    def tilt_deg(self) -> float:
        return self.angle

    def set_tilt(self, angle_deg: float) -> float:
        if self.fail_at is not None and angle_deg == self.fail_at:
            self.fail_at = None  # fails once
            raise NionAdapterError(f"the stage did not confirm StageOutA = {angle_deg}")
        self.angle = angle_deg
        self.moves.append(angle_deg)
        return angle_deg

    def beam_current_pa(self) -> float | None:
        return 100.0

    def field_of_view_nm(self) -> float | None:
        return 4.0

    def _image(self) -> np.ndarray:
        return np.full((self.size, self.size), 1.0 + self.angle, np.float32)

    def acquire_haadf(self, dwell_us: float) -> HaadfScan:
        if self.block:
            self.aborted.wait(10)
            raise AcquisitionAbortedError("aborted")
        return HaadfScan(self._image(), dwell_us, 0.5)

    def acquire_spectrum_image(self, exposure_ms: float) -> SpectrumImage:
        # a flat 1/E^3 background with an O K edge of 100 counts per eV times exposure
        si = np.broadcast_to(1e8 * self.energy**-3.0, (self.size, self.size, self.energy.size))
        si = si + 100.0 * exposure_ms * (self.energy >= 532)
        return SpectrumImage(self._image(), np.ascontiguousarray(si), self.energy, "eV",
                             exposure_ms, 0.5)

    def abort(self) -> None:
        self.aborted.set()


class FakeController:
    """Just enough of a controller: hello, acks, commands, and a record of what arrived."""

    def __init__(self, endpoint: str, identity: bytes = b"test-controller") -> None:
        self.client = ControllerClient(endpoint, identity=identity)
        self.series = "unknown"
        self.received: list[Message] = []

    def close(self) -> None:
        self.client.close()

    def send(self, mtype: str, seq: int = 0, **fields) -> None:
        self.client.send(make(mtype, self.series, seq, **fields))

    def hello(self, last_seq: int = -1) -> None:
        self.send(HELLO, last_seq=last_seq)

    def ack(self, seq: int) -> None:
        self.send(ACK, ack_seq=seq, status="recorded")

    def command(self, cmd: str, cid: int, **args) -> None:
        self.send(COMMAND, cmd=cmd, id=cid, **args)

    def recv(self, timeout: float = 3.0) -> Message | None:
        frames = self.client.recv_frames(int(timeout * 1000))
        if frames is None:
            return None
        msg = decode(frames)
        if msg.type == SERIES_START:
            self.series = msg.header["series"]
        self.received.append(msg)
        return msg

    def collect(self, until: Callable[[Message], bool] | None = None, *, ack: bool = True,
                quiet: float = 3.0) -> list[Message]:
        """Receive (acking data if `ack`) until `until(msg)` holds or `quiet` s pass."""
        got: list[Message] = []
        while True:
            msg = self.recv(quiet)
            if msg is None:
                return got
            got.append(msg)
            if ack and msg.type not in (ACK, ERROR):
                self.ack(msg.seq)
            if until is not None and until(msg):
                return got

    def until(self, pred: Callable[[Message], bool], *, ack: bool = True,
              timeout: float = 5.0) -> list[Message]:
        """Receive (acking data if `ack`) until `pred` holds; fails if it never does."""
        got = self.collect(pred, ack=ack, quiet=timeout)
        assert got and pred(got[-1]), f"nothing more after {[m.type for m in got]}"
        return got

    def reply(self, cid: int) -> list[Message]:
        """Everything received up to and including the ack of command `cid`."""
        return self.until(lambda m: m.type == ACK and m.header.get("ack_seq") == cid)

    def reply_to(self, cid: int, timeout: float = 3.0) -> Message:
        """The ack of command `cid` (data arriving meanwhile is kept and acked)."""
        got = self.collect(lambda m: m.type == ACK and m.header["ack_seq"] == cid,
                           quiet=timeout)
        assert got and got[-1].type == ACK, f"no reply to command {cid}: {got}"
        return got[-1]




def fake_config(**kw: Any) -> NionTomoConfig:
    base: dict[str, Any] = dict(elements=("O",), size=8, haadf_dwell_us=2.0, exposure_ms=3.0,
                                haadf_angles=(-20.0, 0.0, 20.0), chem_angles=(0.0,),
                                auto=False)
    base.update(kw)
    return NionTomoConfig(**base)


@contextmanager
def serving(session: InstrumentSession, *, wait_s: float = 5.0) -> Iterator[dict]:
    """`session` serving in a thread; `out["stats"]` once it returns. On leaving: wait up to
    `wait_s` for it to end by itself (series end acknowledged), then stop it; its error, if
    any, is raised, and it must have stopped."""
    session.bind()
    stop = threading.Event()
    out: dict = {}

    def target() -> None:
        try:
            out["stats"] = session.serve(stop)
        except BaseException as e:  # re-raised in the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield out
    finally:
        t.join(wait_s)
        stop.set()
        t.join(30)
        assert not t.is_alive(), "the instrument session did not stop"
    if "error" in out:
        raise out["error"]


def make_session(backend: str, **kw: Any) -> InstrumentSession:
    """The simulated instrument (FAST) or the Nion adapter on a FakeMicroscope (11 HAADF
    tilts, -60..60 in 12 degree steps, one spectrum image at 0), running by itself unless
    `auto=False`."""
    if backend == "simulated":
        return SimulatedInstrument(InstrumentParams(**{**FAST, **kw}))
    angles = tuple(float(a) for a in range(-60, 61, 12))
    cfg = {"haadf_angles": angles, "chem_angles": (0.0,), "auto": True, **kw}
    return NionTomoAdapter(fake_config(**cfg), FakeMicroscope())


def tilts(msgs: list[Message], mtype: str = HAADF_TILT) -> list[Message]:
    return [m for m in msgs if m.type == mtype]


