"""The instrument side of the fusetomo protocol, for any microscope.

- `plans`: tilt schemes (`TiltScheme`) and ordered acquisition plans (`TiltPlan`,
  `make_plan`, `sequential`, `dose_symmetric`, `from_angles`);
- `microscope`: what a backend must do (`Microscope`) and what its acquisitions return
  (`HaadfScan`, `SpectrumImage`);
- `session`: `InstrumentSession`, the protocol over a `Microscope` (socket, plan, commands,
  worker thread), with `SessionConfig`;
- `commands`: the command state machine and the replies to a controller;
- `delivery`: `Outbox`, at-least-once delivery of the data messages.

The simulated instrument (`fusetomo.simulators.instrument`) and the Nion Swift adapter
(`fusetomo.adapters.nion`) are sessions over their microscopes. Nothing here imports the
simulators or the solver.
"""

from fusetomo.adapters.instrument.commands import MANUAL_COMMANDS, InstrumentStats
from fusetomo.adapters.instrument.delivery import Outbox
from fusetomo.adapters.instrument.microscope import (
    AcquisitionAbortedError,
    HaadfScan,
    Microscope,
    SpectrumImage,
    pixel_dose,
)
from fusetomo.adapters.instrument.plans import (
    DOSE_SYMMETRIC,
    ORDERS,
    SEQUENTIAL,
    PlanStep,
    SchemeError,
    TiltPlan,
    TiltScheme,
    dose_symmetric,
    from_angles,
    make_plan,
    sequential,
)
from fusetomo.adapters.instrument.session import InstrumentSession, SessionConfig

__all__ = [
    "DOSE_SYMMETRIC", "MANUAL_COMMANDS", "ORDERS", "SEQUENTIAL", "AcquisitionAbortedError",
    "HaadfScan", "InstrumentSession", "InstrumentStats", "Microscope", "Outbox", "PlanStep",
    "SchemeError", "SessionConfig", "SpectrumImage", "TiltPlan", "TiltScheme",
    "dose_symmetric", "from_angles", "make_plan", "pixel_dose", "sequential",
]
