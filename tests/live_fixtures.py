"""Helpers for the live-loop tests: a hand-driven fake instrument, threads running the
simulated instrument and the controller (each joined on leaving its block, checked to have
stopped, its error re-raised), and an address where nothing listens."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq

from fusetomo.adapters.protocol import HELLO, Message, decode
from fusetomo.adapters.runfile import describe_run
from fusetomo.controller.live import LiveController, LiveParams
from fusetomo.simulators.instrument import InstrumentParams, SimulatedInstrument

# A small, fast series: 16^3, 11 HAADF + 3 chemical tilts.
SMALL = {"size": 16, "tilt_range": (-60.0, 60.0), "haadf_step": 12.0, "chem_step": 60.0,
         "seed": 3}
# A deterministic schedule on the CPU: k iterations per tilt, nothing in between.
STRICT = LiveParams(device="cpu", iterations_per_tilt=2, idle_iterations=False,
                    interleave=False, final_iterations=3, heartbeat_s=0.3)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """A loopback address nothing listens on, for as long as the block runs: the port is
    bound (port 0, chosen by the system) but not listening, so connections are refused and
    no other process can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Driver:
    """A fake instrument driven by the test: a ROUTER that learns the controller from its
    hello, then sends raw frames one message at a time and returns the reply. As an
    instrument does, it sends the message again when the controller says hello before
    replying (the controller reconnects once it knows the series' image size)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.router_handover = True
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peer: bytes | None = None

    @staticmethod
    def client(endpoint: str) -> zmq.Socket:
        """A bare DEALER connected to `endpoint` (a controller the test plays itself)."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        return sock

    def wait_hello(self, timeout: float = 10.0) -> Message:
        msg = self._next(timeout, skip_hello=False)
        assert msg.type == HELLO, msg.header
        return msg

    def _next(self, timeout: float, *, skip_hello: bool,
              resend: list[bytes] | None = None) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError("no reply from the controller")
            peer, *frames = self.sock.recv_multipart()
            self.peer = peer
            msg = decode(frames)
            if skip_hello and msg.type == HELLO:
                if resend is not None:
                    self.sock.send_multipart([peer, *resend])
                continue
            return msg

    def exchange(self, frames: list[bytes], timeout: float = 10.0) -> Message:
        """Send one message's frames; the controller's reply (hellos skipped; the message
        is sent again after one, as it may have been lost with a connection)."""
        assert self.peer is not None, "wait_hello first"
        self.sock.send_multipart([self.peer, *frames])
        return self._next(timeout, skip_hello=True, resend=frames)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@contextmanager
def controller_thread(address: str, run_path: Path, params: LiveParams = STRICT, *,
                      raise_error: bool = True,
                      **kwargs: Any) -> Iterator[tuple[LiveController, dict[str, Any]]]:
    """A LiveController running in a thread; `result` gets 'code' or 'error'. Stopped and
    joined on leaving the block, which fails if the thread did not stop, and re-raises its
    error unless `raise_error` is False (the test then checks `result` itself)."""
    ctrl = LiveController(address, run_path, params, **kwargs)
    stop = threading.Event()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["code"] = ctrl.run(stop)
        except Exception as e:  # reported to the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    result["thread"] = t
    try:
        yield ctrl, result
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive(), "the controller thread did not stop"
    if raise_error and "error" in result:
        raise result["error"]


@contextmanager
def instrument_thread(**kwargs: Any) -> Iterator[SimulatedInstrument]:
    """The simulated instrument serving in a thread (stopped, joined and checked on leaving
    the block; an error in the thread is re-raised)."""
    inst = SimulatedInstrument(InstrumentParams(**{**SMALL, "speed": 1e4, **kwargs}))
    inst.bind()
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            inst.serve(stop)
        except BaseException as e:  # re-raised in the test
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield inst
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive(), "the instrument thread did not stop"
    if errors:
        raise errors[0]


def wait_for(cond, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def recorded_tilts(path: Path) -> int:
    """Tilts committed to a run file, read while its writer may be live (0 if unreadable)."""
    try:
        d = describe_run(path)
    except Exception:
        return 0
    return int(d["haadf_tilts"]) + int(d["chem_tilts"])
