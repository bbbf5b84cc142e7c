"""Shared fixtures.

Tests that read the real datasets are marked ``@pytest.mark.realdata`` and take the ``data_root``
fixture. Outside CI they are skipped when the data is not there; in CI (``$CI`` set) a missing
``$SUBPOP_DATA_ROOT`` or a folder without ``adult/adult.data`` is a failure, so that a
misconfigured CI job cannot go green by skipping every real-data test.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _data_problem() -> tuple[Path | None, str | None]:
    """(root, None) when the real data is usable, else (root or None, what is wrong)."""
    raw = os.environ.get("SUBPOP_DATA_ROOT")
    if not raw:
        return None, "the environment variable SUBPOP_DATA_ROOT is not set"
    root = Path(raw)
    if not (root / "adult" / "adult.data").is_file():
        return root, f"SUBPOP_DATA_ROOT={raw!r} has no adult/adult.data"
    return root, None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root, problem = _data_problem()
    if problem is not None:
        _unavailable(f"real-data tests need the official datasets: {problem}. Point "
                     f"SUBPOP_DATA_ROOT at the data folder (in this repository: ../shared/data).")
    return root


def _unavailable(message: str):
    """Skip the test, or fail it in CI, which must run every test."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        _unavailable("headless Chromium is needed to check the rendered site (apt-get install chromium)")
    return path


@pytest.fixture(scope="session")
def fused_kernel():
    """The compiled fused CPU trainer. Skipped without a C++ compiler, except in CI, where the
    fused path is the default trainer and must be tested."""
    from bench.models import fused

    lib = fused.library()
    if lib is None:
        _unavailable("the fused CPU trainer could not be built (no working C++ compiler: set $CXX)")
    return lib
