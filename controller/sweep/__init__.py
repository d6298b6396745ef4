"""Parameter sweeps of the fused reconstruction as tasks on Dask (`fusetomo sweep`).

A sweep is a TOML file (`bench/sweeps/*.toml`; the format is in docs/scaling.md):

    name = "atlas-32"
    method = "grid"                 # grid | bayes
    iterations = 60
    seeds = [0, 1]                  # replicates: specimen and noise seed
    retries = 2                     # a failed task is retried this many times

    [specimen]                      # built-in name or a specimen file, or series files
    name = "nanocubes"
    size = 32

    [fixed]                         # parameters held fixed
    chem_snr = 2.5
    [grid]                          # conditions: one map cell per combination
    chem_step = [10, 15, 30]
    [space]                         # hyperparameters: lists (grid) or ranges (bayes)
    lambda_tv = [0.002, 0.005, 0.01]
    [bayes]                         # only for method = "bayes"
    n_calls = 16

Every parameter is one of FusionParams' fields (the solver's gamma and weights), an
acquisition setting (`chem_snr`, `chem_dose`, `dose` (a factor on the chemical dose),
`haadf_snr`, `background_fraction`, `acq_gamma`: the exponent the simulation uses) or a
sampling setting (`tilt_max`, `haadf_step`, `chem_step`, `n_haadf_tilts`, `n_chem_tilts`).
The objective is <NRMSE> (fusetomo.solver.metrics) against the truth, averaged over the
replicates of a point.

Grid search submits every (point, replicate) task at once; Bayesian search runs one
scikit-optimize `Optimizer` per map cell with asynchronous ask/tell: whenever a point's
replicates are all back it is told, and a new point is asked with the points still in
flight told to a copy of the optimiser at the best value so far (a constant liar), so
that workers never wait for a batch.

Every finished task is appended (flushed and fsynced) to `OUT/results.csv`, which is the
sweep's journal: a sweep started again on the same folder skips the tasks found there with
status `ok` (a task is named by a hash of everything that decides its result). A task that
raises is logged with status `error` and resubmitted up to `retries` times; one that still
fails is recorded as `failed`, reported, and makes the sweep end with SweepFailedError.
At the end `OUT/results.h5` holds the same table plus the per-point summary, and
`OUT/points.csv` and `OUT/nrmse_map.png` (the <NRMSE> map of the 3D paper's Fig. 4a: the
best point of each cell) are written.

The package: `config` (the TOML file), `task` (one evaluation), `tables` (the journal),
`run` (Dask, grid and Bayesian search), `summary` (per-point table, results.h5, plots).
"""

from fusetomo.controller.sweep.config import (
    ACQUISITION_NAMES,
    FORMAT,
    FUSION_NAMES,
    PARAMETER_NAMES,
    SAMPLING_NAMES,
    VERSION,
    BayesConfig,
    Built,
    Dimension,
    Log,
    SpecimenConfig,
    SweepConfig,
    SweepConfigError,
    SweepFailedError,
    TaskError,
    build_parameters,
    load_config,
    parse_config,
)
from fusetomo.controller.sweep.run import (
    SweepResult,
    dask_client,
    run_sweep,
)
from fusetomo.controller.sweep.summary import (
    plot_results,
    summarize,
    write_tables,
)
from fusetomo.controller.sweep.tables import (
    Journal,
    elements_of,
)
from fusetomo.controller.sweep.task import (
    Task,
    evaluate,
    make_task,
    point_key,
)

__all__ = [
    "ACQUISITION_NAMES", "FORMAT", "FUSION_NAMES", "PARAMETER_NAMES", "SAMPLING_NAMES",
    "VERSION", "BayesConfig", "Built", "Dimension", "Journal", "Log", "SpecimenConfig",
    "SweepConfig", "SweepConfigError", "SweepFailedError", "SweepResult", "Task", "TaskError",
    "build_parameters", "dask_client", "elements_of", "evaluate", "load_config", "make_task",
    "parse_config", "plot_results", "point_key", "run_sweep", "summarize", "write_tables",
]
