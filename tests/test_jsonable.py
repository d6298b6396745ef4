"""core/jsonable.py: NumPy values in JSON documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusetomo.core.jsonable import lenient_default, numpy_default


def test_numpy_values_become_plain_json():
    doc = {"a": np.float32(0.5), "b": np.arange(3, dtype=np.int16), "c": np.bool_(True),
           "p": Path("/x/y.h5"), "n": [np.int64(7)]}
    back = json.loads(json.dumps(doc, default=numpy_default))
    assert back == {"a": 0.5, "b": [0, 1, 2], "c": True, "p": "/x/y.h5", "n": [7]}


def test_strict_names_the_type_and_lenient_falls_back_to_str():
    class Odd:
        def __str__(self) -> str:
            return "odd"

    with pytest.raises(TypeError, match="Odd is not JSON serialisable"):
        json.dumps({"x": Odd()}, default=numpy_default)
    assert json.loads(json.dumps({"x": Odd(), "y": np.float64(2.0)},
                                 default=lenient_default)) == {"x": "odd", "y": 2.0}
