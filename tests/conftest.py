"""Shared fixtures. `mirror`: the real data sets, through the same download path users take."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MIRROR = REPO.parent / "shared" / "datasets"
NO_MIRROR = "no data mirror"  # marks skips caused by a missing mirror, counted in the summary


def mirror_location() -> str | None:
    """STRATA_DATA_MIRROR when set, else <repo>/../shared/datasets when it exists, else None."""
    env = os.environ.get("STRATA_DATA_MIRROR")
    if env:
        return env
    return str(SHARED_MIRROR) if SHARED_MIRROR.is_dir() else None


@pytest.fixture(scope="session")
def strata_home(tmp_path_factory) -> Path:
    """One cache folder for the whole session, so each data set is copied from the mirror once."""
    return tmp_path_factory.mktemp("strata_home")


@pytest.fixture
def mirror(monkeypatch, strata_home) -> str:
    """Sets STRATA_DATA_MIRROR (kept if already set) and STRATA_HOME (the session cache); returns
    the mirror. Skips the test when there is no mirror."""
    where = mirror_location()
    if where is None:
        pytest.skip(f"{NO_MIRROR}: set STRATA_DATA_MIRROR to a folder or URL laid out like shared/datasets "
                    f"(looked for {SHARED_MIRROR})")
    monkeypatch.setenv("STRATA_DATA_MIRROR", where)
    monkeypatch.setenv("STRATA_HOME", str(strata_home))
    return where


def pytest_report_header(config):
    where = mirror_location()
    return f"strata data mirror: {where or f'none (tests that need real data sets will be skipped; looked for {SHARED_MIRROR})'}"


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if NO_MIRROR in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped for lack of a data mirror "
                                    f"(set STRATA_DATA_MIRROR or provide {SHARED_MIRROR})")
