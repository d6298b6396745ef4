"""The outside world's formats and the other parties' side of the live protocol. Nothing
here imports the solver or the simulators.

- `series`: the tilt series in memory (`TiltSeries`); `seriesfile`, `runfile`, `reconfile`:
  the series, live-run and reconstruction files (docs/file-format.md);
- `protocol`: the wire protocol's typed messages and codec; `transport`: its ZeroMQ
  sockets, one class per role, with CURVE authentication;
- `instrument`: the instrument side of the protocol over any microscope (tilt plans, the
  session, commands, delivery); `nion`: the Nion Swift microscope behind it;
- `importers`, `spectra`: vendor files and spectrum images to a series.
"""

__all__ = ["importers", "instrument", "nion", "protocol", "reconfile", "runfile", "series",
           "seriesfile", "spectra", "transport"]
