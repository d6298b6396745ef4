"""The live commands' child processes: `fusetomo` run by this Python, whose first
stdout line announces an endpoint."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from fusetomo.adapters.transport import DEFAULT_BIND
from fusetomo.cli.live_options import INSTRUMENT_PREFIX, STARTUP_TIMEOUT_S, LiveCommandError


# -- child processes ------------------------------------------------------------------------
def fusetomo_argv(*args: str) -> list[str]:
    """A `fusetomo` command line run by this Python (no dependence on PATH)."""
    return [sys.executable, "-m", "fusetomo.cli", *args]


class Child:
    """A child process whose first stdout line announces an endpoint; the rest of its
    stdout is collected by a thread (so that the pipe never fills), stderr goes to a file
    (or is inherited)."""

    def __init__(self, argv: list[str], prefix: str, log_file: Path | None = None,
                 timeout: float = STARTUP_TIMEOUT_S) -> None:
        self.argv = argv
        self.log_file = log_file
        self._log: IO[str] | None = None if log_file is None else open(log_file, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                     stderr=self._log if self._log is not None else None,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.endpoint = self._first_line(prefix, timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def _first_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.stop()
                raise LiveCommandError(f"{' '.join(self.argv[3:5])} did not start within "
                                       f"{timeout:g} s{self.log_tail()}") from None
            if line is None:
                self.proc.wait()
                raise LiveCommandError(f"{' '.join(self.argv[3:5])} exited with status "
                                       f"{self.proc.returncode} before it was ready"
                                       f"{self.log_tail()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            self.lines.append(line)

    def rest(self) -> list[str]:
        """Stdout lines after the first (call once the process has ended)."""
        self._reader.join(timeout=5)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return self.lines

    def log_tail(self, n: int = 12) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        if self._log is not None:
            self._log.flush()
        lines = self.log_file.read_text(errors="replace").splitlines()[-n:]
        return (f" ({self.log_file}:\n  " + "\n  ".join(lines) + ")") if lines else ""

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return self.proc.returncode

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()


def start_instrument(extra: list[str], log_file: Path | None = None) -> Child:
    return Child(fusetomo_argv("instrument-sim", "--bind", DEFAULT_BIND, "--log-level",
                               "WARNING", *extra), INSTRUMENT_PREFIX, log_file)
