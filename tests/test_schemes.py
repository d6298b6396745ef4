"""Tilt schemes as ordered acquisition plans."""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.adapters.instrument.plans import (
    DOSE_SYMMETRIC,
    SEQUENTIAL,
    PlanStep,
    SchemeError,
    TiltPlan,
    dose_symmetric,
    from_angles,
    make_plan,
    sequential,
)
from fusetomo.simulators.forward import TiltScheme


def test_sequential_goes_end_to_end_on_the_forward_grid():
    plan = sequential((-70, 70), 3, 15)
    ref = TiltScheme(tilt_range=(-70, 70), haadf_step=3, chem_step=15)
    assert plan.order == SEQUENTIAL
    assert plan.haadf_angles == ref.haadf().tolist()  # ascending, identical floats
    assert plan.chem_angles == ref.chem().tolist()
    assert len(plan) == 47 and plan.n_chem == 10
    assert plan[0] == PlanStep(-70.0, True) and plan[1] == PlanStep(-67.0, False)
    assert [s.angle for s in plan] == plan.haadf_angles
    back = sequential((-70, 70), 3, 15, descending=True)
    assert back.haadf_angles == plan.haadf_angles[::-1]
    assert back.chem_angles == plan.chem_angles[::-1]


def test_dose_symmetric_alternates_sides_from_zero():
    plan = dose_symmetric((-9, 9), 3, 6)
    assert plan.order == DOSE_SYMMETRIC
    assert plan.haadf_angles == [0, 3, -3, 6, -6, 9, -9]
    assert plan.chem_angles == [0, 6, -6]
    assert plan[0].with_spectrum and not plan[1].with_spectrum
    grouped = dose_symmetric((-12, 12), 3, 6, group=2)
    assert grouped.haadf_angles == [0, 3, 6, -3, -6, 9, 12, -9, -12]


def test_dose_symmetric_keeps_going_on_the_longer_side_and_other_start():
    plan = dose_symmetric((-6, 12), 3, 6)
    assert plan.haadf_angles == [0, 3, -3, 6, -6, 9, 12]
    shifted = dose_symmetric((-10, 10), 5, 10, start=5)
    assert shifted.haadf_angles == [5, 10, 0, -5, -10]
    assert shifted.chem_angles == [5, -5]


def test_chemical_tilts_off_the_haadf_grid_are_added():
    plan = sequential((0, 20), 10, 5)
    assert plan.haadf_angles == [0, 5, 10, 15, 20]
    assert plan.chem_angles == plan.haadf_angles
    plan = from_angles([0, 10, -10], [5], DOSE_SYMMETRIC)
    assert plan.haadf_angles == [0, 5, -10, 10] and plan.chem_angles == [5]  # sides alternate


def test_explicit_lists_put_in_order_and_forward_scheme():
    plan = from_angles([30, -30, 0, 10, -10], [0, 30])
    assert plan.haadf_angles == [-30, -10, 0, 10, 30] and plan.chem_angles == [0, 30]
    ds = make_plan(DOSE_SYMMETRIC, haadf_angles=[30, -30, 0, 10, -10], chem_angles=[0, 30])
    assert ds.haadf_angles == [0, 10, -10, 30, -30]
    scheme = ds.tilt_scheme()
    np.testing.assert_array_equal(scheme.haadf(), [-30, -10, 0, 10, 30])
    np.testing.assert_array_equal(scheme.chem(), [0, 30])
    assert ds.as_header() == {"haadf_angles": [0, 10, -10, 30, -30], "chem_angles": [0, 30],
                              "order": DOSE_SYMMETRIC}


@pytest.mark.parametrize(("call", "needle"), [
    (lambda: sequential((10, -10), 3, 15), "(10.0, -10.0)"),
    (lambda: sequential((-70, 95), 3, 15), "95"),
    (lambda: sequential((-70, 70), 0, 15), "HAADF step must be a finite number > 0, got 0"),
    (lambda: sequential((-70, 70), 3, -1), "chemical step must be a finite number > 0, got -1"),
    (lambda: sequential((-70, 70), float("nan"), 15), "nan"),
    (lambda: sequential((-70, 70), 1e-6, 15), "1e-06"),
    (lambda: sequential((-70,), 3, 15), "(-70,)"),
    (lambda: dose_symmetric((-70, 70), 3, 15, start=80), "start angle 80"),
    (lambda: dose_symmetric((-70, 70), 3, 15, group=0), "got 0"),
    (lambda: from_angles([0, 3, 3.0000000001], [0]), "HAADF angle 3"),
    (lambda: from_angles([0, 3], [91]), "chemical angle 91"),
    (lambda: from_angles([0, "x"], [0]), "'x'"),
    (lambda: from_angles([], []), "both empty"),
    (lambda: from_angles([0], [0], "zigzag"), "'zigzag'"),
    (lambda: make_plan("spiral"), "'spiral'"),
    (lambda: TiltPlan((PlanStep(0, False), PlanStep(0, True)), SEQUENTIAL), "tilt 0"),
])
def test_bad_values_are_named(call, needle):
    with pytest.raises(SchemeError) as e:
        call()
    assert needle in str(e.value)
