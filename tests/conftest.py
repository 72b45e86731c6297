"""Session setup shared by every test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from suites import calibration
from tests._cli import ROOT, TEST_CACHE, TEST_CEILINGS

# matplotlib's font cache in the project, not in the user's home
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))


PERF = Path(__file__).resolve().parent / "perf"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave tests/perf (pytest-benchmark timings) out unless the command line names it."""
    if collection_path != PERF:
        return None
    named = (Path(arg.split("::")[0]).resolve() for arg in config.args)
    return None if any(p == PERF or PERF in p.parents for p in named) else True


@pytest.fixture(scope="session", autouse=True)
def seeded_ceilings() -> Iterator[Path]:
    """Fixed CPU ceilings in the tests' cache directory (the CLI subprocesses read them)."""
    saved = os.environ.get("LAYERBENCH_CACHE_DIR")
    os.environ["LAYERBENCH_CACHE_DIR"] = str(TEST_CACHE)
    try:
        yield calibration.save("cpu", {**TEST_CEILINGS, "torch": torch.__version__,
                                       "threads": torch.get_num_threads()})
    finally:
        if saved is None:
            os.environ.pop("LAYERBENCH_CACHE_DIR", None)
        else:
            os.environ["LAYERBENCH_CACHE_DIR"] = saved
