"""The shared hyper-parameter checks (bench/validation.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.validation import check_integer, check_positive

ANYTHING = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.text(max_size=3), st.none(), st.integers(-5, 5).map(np.int64))


@given(ANYTHING, st.integers(-2, 3))
def test_check_integer_accepts_exactly_the_integers_at_or_above_the_minimum(value, minimum):
    ok = type(value) in (int, np.int64) and value >= minimum
    if ok:
        check_integer("k", value, minimum)
    else:
        with pytest.raises(ValueError, match=rf"^k must be an integer >= {minimum}, got "):
            check_integer("k", value, minimum)


@given(ANYTHING, st.booleans())
def test_check_positive_accepts_exactly_the_finite_positive_numbers(value, allow_zero):
    ok = type(value) in (int, float, np.int64) and math.isfinite(value) and (
        value > 0 or (allow_zero and value == 0))
    if ok:
        check_positive("lr", value, "go", allow_zero)
    else:
        with pytest.raises(ValueError, match=r"^go lr must be a finite number >=? 0, got "):
            check_positive("lr", value, "go", allow_zero)


def test_none_allowed_only_when_asked():
    check_integer("k", None, 1, allow_none=True)
    with pytest.raises(ValueError, match=r"k must be None or an integer >= 1, got 0"):
        check_integer("k", 0, 1, allow_none=True)
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got None"):
        check_integer("k", None, 1)
