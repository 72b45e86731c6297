"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, line in enumerate(ci) if line.startswith("# README test command"))
    command = ci[marker + 1].strip()
    assert command.endswith("pytest")
    readme = (ROOT / "README.md").read_text().splitlines()
    assert command in [line.strip() for line in readme]


def test_readme_main_job_runs_the_conv_suite() -> None:
    readme = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    assert "pip install torch==2.13.0 -e . && python cli.py bench conv" in readme
