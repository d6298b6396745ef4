"""The controller's crash-safe record of a live run (`format = "fusetomo-run"`, version 3).

A run file is a tilt-series file (docs/file-format.md §1: `/haadf/*`, `/chem/<El>/*`, the
element attributes Z and background, root `gamma` and `pixel_size_nm`), written tilt by tilt
in arrival order, plus a `/run` group:

    /run/haadf/<field>, /run/chem/<field>   one row per tilt: seq (int64), t_received,
                        t_sent, t_acquired (Unix s, NaN when unknown), dose_e_per_A2 (this
                        image), cumulative_dose_e_per_A2 (the specimen's total, both
                        modalities, after this image), crc32 (of the stored float32 frames,
                        chemical ones concatenated in element order, then of seq, angle,
                        dose and cumulative dose packed as little-endian <qddd)
    /run/events         S1024 rows: JSON objects {"kind", "time", ...}; an event longer than
                        a row continues in the next rows, and a full row (1024 bytes, no
                        padding) means "continued" (an event of exactly k*1024 bytes ends
                        with an empty row)
    /run/costs/iteration, /run/costs/<term>    one row per recorded solver iteration; the
                        terms are fixed when the file is created (COST_TERMS by default)
    /run/snapshots/{volumes [k, n_el, ns, nd, nd] float32, iteration [k], n_tilts [k, 2]
                        (HAADF, chemical tilts recorded), final [k] (int8), crc32 [k] (of
                        the float32 volumes, then iteration, n_tilts and final as <i8)}
    /run/std_error/{volumes, iteration, n_tilts, final}   the same, for error maps
    /run/state          int64 [2, 10]: the commit record (below)
    / attrs             format, version, series_id, created, fusetomo_version,
                        start_header (the SERIES_START header as JSON), gamma,
                        pixel_size_nm, dose_budget_e_per_A2 -- all fixed at creation

Crash safety. The writer uses HDF5 single-writer/multiple-reader mode (SWMR), in which HDF5
orders its metadata writes so that the file on disk is always coherent for a reader. The
whole layout is built in a temporary file, SWMR writing is switched on, and only then is the
file moved onto its name; a run is reopened directly in SWMR-write mode. So the file at
`path` is never open in plain write mode, whose crash leaves a file no reader opens. SWMR
forbids new objects and attributes, so everything that changes (counts, `complete`, update
time) lives in datasets created up front. Appending a record: resize and write the rows of
every dataset concerned, flush, write the commit record, flush, return. The commit record
holds how many rows of each kind are committed, `complete` and `updated_us`; it goes
alternately to one of two slots, each with a generation number and a CRC-32, and readers
take the valid slot of highest generation (a torn commit leaves the previous one). Readers
use only the committed prefix of each dataset; every tilt carries a CRC of its frames and
numbers, every snapshot a CRC of its volumes (`verify_run` checks them all).
Hence, after `kill -9` of the writer at any moment, every tilt (event, cost row, snapshot)
whose `record_*` call returned is intact and present once; the one in flight is wholly
present or absent; rows past the commit record are ignored, and dropped on resume. With
`durable=True` (default) tilts and the completion are also fsync'ed before and after their
commit, against power loss (as far as the disk honours the barriers); events, costs and
volumes are flushed (they survive a crash of the process) but not fsync'ed, to keep the
solver loop fast.

Where SWMR falls short, and what is done instead:
- A file whose SWMR writer died keeps HDF5's "open for SWMR write" flag: only SWMR readers
  open it (`read_run`, `describe_run`, `read_snapshot` do; `read_series` and a plain
  `h5py.File(path)` are refused). `RunFile.resume` therefore rebuilds it: the committed
  prefix is copied into a fresh file, written under a temporary name and moved into place
  with `os.replace` (a kill during the copy leaves the old file). A cleanly closed run is
  reopened in place, without a copy. After `close`, any HDF5 reader opens the file.
- Variable-length strings are not relied on (SWMR's guarantees are about appending to
  chunked datasets of fixed-size types), hence the fixed-width event rows. Filtered chunks
  are reallocated when rewritten, so only datasets whose every chunk holds one row, written
  once, are compressed (the images, maps and volumes: `storage`, gzip with shuffle; preview
  volumes rounded first); a reader needs nothing but HDF5's built-in gzip filter.
- HDF5 drops its own file lock once SWMR writing starts, so a live writer holds an
  open-file-description lock (Linux `F_OFD_SETLK`) on one byte far past the end of the
  file, which HDF5 readers' `flock` does not touch; `resume` and `create(overwrite=True)`
  refuse a file with a live writer (no such check where OFD locks do not exist), and
  `resume` deletes temporary files left by dead writers.

The package: `store` (commit record, lock, file modes, rows), `layout` (the datasets, built
up front; checksums), `storage` (compression, preview rounding), `writer` (`RunFile`),
`history` (reading back, shaping rows), `reader` (`read_run`, `read_snapshot`,
`describe_run`, `verify_run`).
"""

from fusetomo.adapters.runfile.layout import COST_TERMS, FORMAT, TILT_FIELDS, VERSION
from fusetomo.adapters.runfile.reader import (
    RunRecord,
    describe_run,
    read_run,
    read_snapshot,
    verify_run,
)
from fusetomo.adapters.runfile.store import (
    EVENT_ROW_BYTES,
    MODALITIES,
    STATE_FIELDS,
    VOLUME_GROUPS,
    RecordRefusedError,
    RunFileError,
)
from fusetomo.adapters.runfile.store import event_rows as _event_rows
from fusetomo.adapters.runfile.store import events_from_rows as _events_from_rows
from fusetomo.adapters.runfile.writer import RunFile

__all__ = [
    "COST_TERMS", "EVENT_ROW_BYTES", "FORMAT", "MODALITIES", "STATE_FIELDS", "TILT_FIELDS",
    "VERSION", "VOLUME_GROUPS", "RecordRefusedError", "RunFile", "RunFileError", "RunRecord",
    "_event_rows", "_events_from_rows", "describe_run", "read_run", "read_snapshot",
    "verify_run",
]
