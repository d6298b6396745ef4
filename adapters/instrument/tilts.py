"""The tilt messages of a finished acquisition, with their doses (the backend's, or from the
beam current and dwell) and header fields."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from fusetomo.adapters.instrument.microscope import pixel_dose
from fusetomo.adapters.instrument.worker import Result

if TYPE_CHECKING:
    from fusetomo.adapters.instrument.session import InstrumentSession


def _totals(session: InstrumentSession) -> dict[str, float]:
    return {"haadf": session.stats.dose_haadf, "chem": session.stats.dose_chem}


def emit_tilts(session: InstrumentSession, res: Result, haadf_seq: int | None = None) -> list[int]:
    """The tilt messages of a finished acquisition. With `haadf_seq` (a spectrum image
    at a held tilt, whose HAADF image was sent already) only the chem_tilt is sent; its
    simultaneous HAADF image would repeat the tilt's angle."""
    c, s = session.config, session.stats
    job = res.job
    angle = float(res.angle if res.angle is not None else session.angle)
    common = {"step": job.step, "on_demand": job.cmd is not None,
              "cmd_id": None if job.cmd is None else job.cmd["id"],
              "stage_tilt_deg": res.readback, "t_acquired": time.time()}
    if res.spectrum is not None:
        sp = res.spectrum
        h_img = sp.haadf
        # one exposure gives both images: unless the backend says otherwise, its dose
        # is counted once, with the spectrum image
        c_dose = sp.dose_e_per_A2 if sp.dose_e_per_A2 is not None else pixel_dose(
            c.beam_current_pa, sp.exposure_ms * 1e-3, sp.pixel_nm)
        h_dose = sp.haadf_dose_e_per_A2 or 0.0
        extra = {"exposure_ms": sp.exposure_ms, "simultaneous_dose_e_per_A2": c_dose,
                 **sp.fields}
    else:
        assert res.haadf is not None
        h_img = res.haadf.image
        h_dose = res.haadf.dose_e_per_A2 if res.haadf.dose_e_per_A2 is not None else \
            pixel_dose(c.beam_current_pa, res.haadf.dwell_us * 1e-6, res.haadf.pixel_nm)
        c_dose = 0.0
        extra = {"dwell_us": res.haadf.dwell_us, **res.haadf.fields}
    seqs: list[int] = []
    if haadf_seq is None:
        s.n_haadf += 1
        s.dose_haadf += h_dose
        seqs.append(session.outbox.emit(
            "haadf_tilt", [np.asarray(h_img, dtype=np.float32)], angle=angle,
            dose_e_per_A2=h_dose, dose_total_e_per_A2=_totals(session),
            with_spectrum=res.spectrum is not None, **extra, **common))
    if res.spectrum is not None:
        assert res.maps is not None
        s.n_chem += 1
        s.dose_chem += c_dose
        seqs.append(session.outbox.emit(
            "chem_tilt", [np.asarray(res.maps[e], dtype=np.float32)
                          for e in session.elements],
            angle=angle, elements=session.elements, dose_e_per_A2=c_dose,
            dose_total_e_per_A2=_totals(session),
            haadf_seq=seqs[0] if haadf_seq is None else haadf_seq, **c.chem_fields,
            **res.spectrum.chem_fields, **extra, **common))
    return seqs

