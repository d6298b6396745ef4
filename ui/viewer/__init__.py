"""The live viewer (`fusetomo view`): a controller's status, orthoslices, costs, dose, tilt
angles and advice, or a recorded run with a slider over tilts.

`model` (the state fed by status messages), `render` (overlay and slice images), `units`
(scale bars, colour-bar labels, titles in nm, weighted costs) and `runsource` (recorded runs)
need only NumPy; `subscriber`, `operator`, `slicegrid`, `costplot`, `panels` and `window`
need the `viewer` extra (pyqtgraph, PySide6) and are imported by `fusetomo view` when it
runs (docs/viewer.md).
"""

from fusetomo.ui.slices import OrthoSlices
from fusetomo.ui.viewer.model import (
    Advice,
    ViewerDataError,
    ViewerModel,
    ViewerState,
)

__all__ = ["Advice", "OrthoSlices", "ViewerDataError", "ViewerModel", "ViewerState"]
