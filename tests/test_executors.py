"""Choosing an executor: bad names and missing engines are bad input, before anything is
written (the Dask executor itself: tests/test_cluster.py, ``-m cluster``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests._cli import describe, invoke


def test_without_distributed_the_executor_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in sys.modules if n == "distributed" or n.startswith("distributed.")
                 or n == "suites.dask_executor"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    done = invoke("bench", "conv", "--executor", "dask", "--out", tmp_path)
    assert done.returncode == 2, describe(done)
    assert "pip install -e '.[cluster]'" in done.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (("--executor", "ray"), "unknown --executor 'ray' (choose from local, dask)"),
    (("--executor", "dask", "--device", "all"), "--device all means the devices of this machine"),
])
def test_bad_executor_input_is_one_line_and_nothing_written(
        args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    done = invoke("bench", "conv", *args, "--out", tmp_path)
    assert done.returncode == 2, describe(done)
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())
