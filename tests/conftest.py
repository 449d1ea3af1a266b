"""Shared test fixtures: where the real public data lives, and a skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when the data is not there (a fresh clone)."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (clone beside ../shared/data, as CI does)")
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Generated scenes (demo) go to one cache per test session, never to the user's ~/.cache.
    cache = tmp_path_factory.getbasetemp() / "nfields_cache"
    monkeypatch.setenv("NFIELDS_CACHE", os.environ.get("NFIELDS_TEST_CACHE", str(cache)))
