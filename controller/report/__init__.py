"""`fusetomo report`: PNG figures and an index.html for a run, reconstruction or series file.

    make_report("run.h5", "report/")   # -> report/index.html, report/report.json, *.png

What goes in (docs/file-format.md): a run file (§3, read through adapters/runfile.py), a
reconstruction file (§2, controller/reconfile.py) or a series file (§1, whose /truth is then
shown). Figures, each skipped with its reason (in index.html and report.json) when its input
is absent:

    orthoslices_<El>.png  three orthogonal planes of each element (truth below when known),
                          scale bar from pixel_size_nm
    overlay.png           additive colour overlay of all elements on the same planes
    std_error.png         per-voxel standard error of each element (when recorded)
    convergence.png       the three cost terms (HAADF, chemical, TV) against iteration
    progress.png          <NRMSE> (truth known) and mean standard error against tilts taken
    dose.png              cumulative dose per modality in acquisition order, and totals
    stoichiometry.png     histograms of per-voxel fractions x_i / sum_j x_j in the specimen
    advice.png            the spectroscopy advisor's predicted gain per dose at each tilt and
                          the tilts where a spectrum image was taken (advice events of a run)

The truth of a run is found, in this order: `truth=` (a series file with /truth); the
/truth of the series file the instrument replayed (its `source` in the start header);
else, for a simulated instrument (no source, a `seed`), the specimen re-simulated from the
start header's specimen and seed as `fusetomo demo` does. A reconstruction's truth is its
`source_file`'s. The figures are drawn with matplotlib's Agg canvas directly (no pyplot, no
global backend switch), so a report can be made inside a Qt viewer process.

The package: `model` (ReportParams, ReportInput, ReportError), `inputs` (reading the file
and its truth), `numbers` (support, composition fractions), `figures`, `document`
(`make_report`, the summary and index.html), `stoichiometry` (atomic fractions per voxel
and per region, with standard errors; also `fusetomo stoichiometry`).
"""

from fusetomo.controller.report.document import FigureEntry, make_report, summary
from fusetomo.controller.report.figures import (
    fig_advice,
    fig_convergence,
    fig_dose,
    fig_orthoslices,
    fig_overlay,
    fig_progress,
    fig_std_error,
    fig_stoichiometry,
    rgb_overlay,
)
from fusetomo.controller.report.inputs import advice_log, load_input, simulated_truth
from fusetomo.controller.report.model import (
    PALETTE,
    PLANES,
    ReportError,
    ReportInput,
    ReportParams,
    TiltPoint,
)
from fusetomo.controller.report.numbers import composition_fractions

__all__ = [
    "PALETTE", "PLANES", "FigureEntry", "ReportError", "ReportInput", "ReportParams",
    "TiltPoint", "advice_log", "composition_fractions", "fig_advice", "fig_convergence",
    "fig_dose", "fig_orthoslices", "fig_overlay", "fig_progress", "fig_std_error",
    "fig_stoichiometry", "load_input", "make_report", "rgb_overlay", "simulated_truth",
    "summary",
]
