"""The command line: files against the schema, exit codes against the contract.

Error paths and small runs go through ``cli.main`` in this process (``invoke``: no second
import of torch each). The quick bench, whose report the tests read, and two bad inputs run as a
user runs them, ``python cli.py ...``, in the background while the rest goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from impls import REGISTRY
from reports.schema import OPS_COLUMNS, SAMPLE_COLUMNS, SCHEMA_VERSION, STATUSES, result_columns
from suites.cases import plan
from suites.config import BenchConfig
from suites.devices import device
from suites.presets import notes_size
from tests._cli import (
    TEST_CEILINGS,
    Done,
    Jobs,
    describe,
    invoke,
    invoke_all,
    one_line_error,
    read_csv,
)
from tests._report import assert_links_resolve, assert_self_contained

LAYER = REGISTRY.layer("conv")
FAST = ("--min-time", "0.05", "--max-time", "0.2", "--quiet", "--no-report")
TINY_SIZE = "N=1,C_in=1,C_out=2,H=8,W=8"
SMALL_SIZE = "N=2,C_in=3,C_out=4,H=10,W=9,k=3,stride=2,padding=1"

GOOD_IMPL = '''
import torch.nn.functional as F
from impls import register_impl


@register_impl("conv", "mine")
def conv2d_mine(x, weight, bias, stride, padding):
    """F.conv2d by another name."""
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)
'''

WRONG_IMPL = '''
import torch.nn.functional as F
from impls import register_impl


@register_impl("conv", "nobias")
def conv2d_nobias(x, weight, bias, stride, padding):
    """Forgets the bias."""
    return F.conv2d(x, weight, None, stride=stride, padding=padding)
'''

BAD_FILES = {
    "raises.py": 'raise RuntimeError("this file is broken")\n',
    "raises_value_error.py": 'raise ValueError("boom")\n',
    "syntax.py": "def oops(:\n",
    "empty.py": "import torch  # registers nothing\n",
    "duplicate.py": ('from impls import register_impl\n\n\n@register_impl("conv", "builtin")\n'
                     "def f(x, weight, bias, stride, padding):\n    return x\n"),
}


def _error_commands(files: Path) -> dict[str, tuple[str, ...]]:
    commands = {
        "unknown-layer": ("bench", "nolayer"),
        "unknown-layer-list": ("list", "nolayer"),
        "unknown-impl": ("bench", "conv", "--impl", "nope"),
        "unknown-device": ("bench", "conv", "--device", "tpu"),
        "unknown-dtype": ("bench", "conv", "--dtype", "float8"),
        "unknown-mode": ("bench", "conv", "--mode", "train"),
        "unknown-compile": ("bench", "conv", "--compile", "turbo"),
        "unknown-preset": ("bench", "conv", "--preset", "huge"),
        "unknown-option": ("bench", "conv", "--bogus"),
        "malformed-size-value": ("bench", "conv", "--size", "N=abc"),
        "malformed-size-item": ("bench", "conv", "--size", "N8"),
        "unknown-size-param": ("bench", "conv", "--size", "groups=2"),
        "nonsense-size": ("bench", "conv", "--size", "k=100"),
        "zero-trials": ("bench", "conv", "--trials", "0"),
        "cuda-index-out-of-range": ("bench", "conv", "--device", "cuda:97"),
        "out-is-a-file": ("bench", "conv", "--impl", "builtin", "--size", TINY_SIZE, "--out",
                          str(files / "empty.py")),
        "impl-file-missing": ("bench", "conv", "--impl-file", str(files / "missing.py")),
        "negative-size": ("bench", "conv", "--size", "N=-1"),
        "heads-do-not-divide": ("bench", "mha", "--size", "d_model=100,n_head=3"),
        "longer-than-n-position": ("bench", "transformer", "--size", "src_len=500"),
        "no-layer": ("bench",),
        "resume-not-a-run": ("bench", "--resume", str(files)),
        "zero-timeout": ("bench", "conv", "--timeout", "0"),
        "precision-zero": ("bench", "conv", "--precision", "0"),
        "precision-not-a-fraction": ("bench", "conv", "--precision", "2"),
        "precision-not-a-number": ("bench", "conv", "--precision", "tight"),
        "cap-below-minimum": ("bench", "conv", "--min-time", "0.5", "--max-time", "0.1"),
        "check-cap-below-minimum": ("check", "--save-baseline", "--baseline",
                                    str(files / "new-baseline"), "--min-time", "0.5",
                                    "--max-time", "0.1", "--out", "{out}"),
    }
    for name in BAD_FILES:
        commands[f"impl-file-{Path(name).stem}"] = ("bench", "conv", "--impl-file",
                                                    str(files / name))
    if not torch.cuda.is_available():
        commands["cuda-without-gpu"] = ("bench", "conv", "--device", "cuda")
    # --out into the job's own (empty) folder, so "nothing was written" can be checked
    return {name: (*args, "--out", "{out}") if args[0] == "bench" and "--out" not in args
            else args for name, args in commands.items()}


@pytest.fixture(scope="module")
def impl_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = tmp_path_factory.mktemp("impl_files")
    (files / "good.py").write_text(GOOD_IMPL, encoding="utf-8")
    (files / "wrong.py").write_text(WRONG_IMPL, encoding="utf-8")
    for name, text in BAD_FILES.items():
        (files / name).write_text(text, encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    """The end-to-end commands, started first: they run while the in-process tests go on."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = Jobs(tmp_path_factory.mktemp("cli"), pool)
        jobs.add("quick", "bench", "conv", "--preset", "quick", "--out", "{out}", "--impl",
                 "builtin", "--impl", "im2col", "--min-time", "0.05", "--max-time", "0.2",
                 "--quiet")  # + report
        jobs.add("unknown-layer", "bench", "nolayer", "--out", "{out}")
        jobs.add("unknown-option", "bench", "conv", "--bogus", "--out", "{out}")
        yield jobs


@pytest.fixture(scope="module")
def runs(jobs: Jobs, impl_files: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Done]:
    """The small runs, in this process (after ``jobs`` started the end-to-end ones)."""
    return invoke_all(tmp_path_factory.mktemp("runs"), {
        "compile": ("bench", "conv", "--compile", "default", "--impl", "builtin", "--size",
                    TINY_SIZE, "--out", "{out}", *FAST),
        "impl-file-good": ("bench", "conv", "--impl-file", impl_files / "good.py", "--impl",
                           "mine", "--size", SMALL_SIZE, "--mode", "fwd,fwdbwd", "--out",
                           "{out}", *FAST),
        "impl-file-wrong": ("bench", "conv", "--impl-file", impl_files / "wrong.py", "--impl",
                            "nobias", "--size", SMALL_SIZE, "--out", "{out}", *FAST),
        "size": ("bench", "conv", "--size", "N=2,C_in=3,H=12,W=12", "--impl", "builtin",
                 "--impl", "einsum", "--out", "{out}", *FAST),
        "profile": ("bench", "conv", "--profile", "--impl", "builtin", "--size", TINY_SIZE,
                    "--mode", "fwd,fwdbwd", "--out", "{out}", *FAST),
    })


@pytest.fixture(scope="module")
def errors(impl_files: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Done]:
    return invoke_all(tmp_path_factory.mktemp("errors"), _error_commands(impl_files))


# --- list -------------------------------------------------------------------------------------


def test_list_names_every_layer_and_implementation() -> None:
    proc = invoke("list")
    assert proc.returncode == 0, describe(proc)
    for layer in REGISTRY.layers():
        assert layer.name in proc.stdout
        for impl in REGISTRY.impls(layer.name):
            assert impl.name in proc.stdout


def test_list_shows_implementations_from_an_impl_file(impl_files: Path) -> None:
    proc = invoke("list", "conv", "--impl-file", impl_files / "good.py")
    assert proc.returncode == 0, describe(proc)
    assert "mine" in proc.stdout and "good.py" in proc.stdout
    assert "builtin" in proc.stdout
    assert "mine" not in invoke("list", "conv").stdout  # the registration did not leak


# --- a quick bench, against the schema --------------------------------------------------------


@pytest.fixture(scope="module")
def quick(jobs: Jobs) -> Path:
    proc = jobs["quick"].proc
    assert proc.returncode == 0, describe(proc)
    return jobs["quick"].run_dir


def test_quick_bench_writes_the_run_files(quick: Path) -> None:
    for name in ("results.csv", "samples.csv", "meta.json"):
        assert (quick / name).is_file(), name


def test_results_have_the_schema_columns(quick: Path) -> None:
    header, _ = read_csv(quick / "results.csv")
    assert header == result_columns(LAYER.params)


def test_results_have_one_row_per_planned_case(quick: Path) -> None:
    planned = plan(BenchConfig(layers=("conv",), impls=("builtin", "im2col"), preset="quick"))
    _, rows = read_csv(quick / "results.csv")
    assert [(r["layer"], r["impl"], r["compile"], r["device"], r["dtype"], r["mode"], r["case"])
            for r in rows] == [(c.layer, c.impl, c.compile, c.device, c.dtype, c.mode, c.label)
                       for c in planned]
    for row, case in zip(rows, planned, strict=True):
        assert row["run_id"] == quick.name
        assert {p: int(row[f"p_{p}"]) for p in LAYER.params} == case.size


def test_results_statuses_and_figures(quick: Path) -> None:
    _, rows = read_csv(quick / "results.csv")
    assert rows
    for row in rows:
        assert row["status"] in STATUSES
        assert row["status"] == "ok", row["reason"]  # builtin and im2col are both correct
        size = {p: int(row[f"p_{p}"]) for p in LAYER.params}
        assert int(row["flops"]) == LAYER.flops(size, row["mode"])
        assert float(row["median_ms"]) > 0
        assert float(row["min_ms"]) <= float(row["median_ms"])
        assert int(row["n_samples"]) >= 1
        assert float(row["rel_err"]) < float(row["rtol"])
        assert float(row["gflops"]) > 0


def test_builtin_speedup_is_one(quick: Path) -> None:
    _, rows = read_csv(quick / "results.csv")
    builtin = [r for r in rows if r["impl"] == "builtin" and r["compile"] == "none"]
    assert builtin
    for row in builtin:
        assert float(row["speedup_vs_builtin"]) == pytest.approx(1.0, rel=1e-12)
    for row in rows:
        assert float(row["speedup_vs_builtin"]) > 0


def test_samples_match_the_results(quick: Path) -> None:
    _, rows = read_csv(quick / "results.csv")
    header, samples = read_csv(quick / "samples.csv")
    assert header == list(SAMPLE_COLUMNS)
    assert len(samples) == sum(int(r["n_samples"]) for r in rows)
    key = ("layer", "impl", "compile", "device", "dtype", "mode", "case")
    for row in rows:
        mine = [s for s in samples if all(s[k] == row[k] for k in key)]
        assert len(mine) == int(row["n_samples"])
        seconds = sorted(float(s["seconds"]) for s in mine)
        assert all(s > 0 for s in seconds)
        assert min(seconds) * 1e3 == pytest.approx(float(row["min_ms"]), rel=1e-9)
        # each sample keeps its interleaving round; im2col's rounds are among its builtin's
        rounds = [int(s["round"]) for s in mine]
        assert len(set(rounds)) == len(rounds) and min(rounds) >= 1
        if row["impl"] != "builtin":
            builtin = {int(s["round"]) for s in samples if s["impl"] == "builtin"
                       and all(s[k] == row[k] for k in key if k != "impl")}
            assert set(rounds) <= builtin


def test_speedups_carry_an_interval_and_rows_say_if_they_are_stable(quick: Path) -> None:
    _, rows = read_csv(quick / "results.csv")
    for row in rows:
        assert float(row["ci_lo_ms"]) <= float(row["median_ms"]) <= float(row["ci_hi_ms"])
        assert row["stable"] in ("0", "1") and float(row["precision"]) >= 0
        assert (row["stable"] == "0") == any(f.startswith(("imprecise:", "interference:"))
                                             for f in row["flags"].split("; "))
        if row["impl"] != "builtin":
            speedup = float(row["speedup_vs_builtin"])
            assert float(row["speedup_lo"]) <= speedup <= float(row["speedup_hi"])


def test_meta_records_command_machine_and_config(quick: Path) -> None:
    meta = json.loads((quick / "meta.json").read_text(encoding="utf-8"))
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["run_id"] == quick.name
    assert "bench" in meta["command"]
    assert "--preset" in meta["command"]
    machine = meta["machine"]
    assert machine["torch"] == torch.__version__
    assert isinstance(machine["threads"], int) and machine["threads"] >= 1
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert "CPU threads" in machine["threads_meaning"]["cpu"]
    config = meta["config"]
    assert config["layers"] == ["conv"]
    assert config["preset"] == "quick"
    assert config["impls"] == ["builtin", "im2col"]
    assert meta["start_time"] and meta["end_time"]


def test_roofline_fraction_uses_the_calibrated_ceilings(quick: Path) -> None:
    meta = json.loads((quick / "meta.json").read_text(encoding="utf-8"))
    ceilings = meta["calibration"]["cpu"]
    assert ceilings["matmul_gflops"] == TEST_CEILINGS["matmul_gflops"]  # the cached figures
    _, rows = read_csv(quick / "results.csv")
    for row in rows:
        flops, bytes_moved = float(row["flops"]), float(row["bytes"])
        attainable = min(ceilings["matmul_gflops"][row["dtype"]],
                         flops / bytes_moved * ceilings["copy_gbps"])
        assert float(row["roofline_frac"]) == pytest.approx(float(row["gflops"]) / attainable,
                                                            rel=1e-9)


def test_bench_ends_with_a_self_contained_report(quick: Path, jobs: Jobs) -> None:
    assert "report.html" in jobs["quick"].proc.stdout
    html = (quick / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    for text in ("conv", "im2col", "builtin", "Fastest correct implementation per size",
                 "growth", torch.__version__):
        assert text in html, text
    plots = sorted((quick / "plots").glob("*.*"))
    assert {p.stem for p in plots} >= {"conv_latency", "conv_speedup", "conv_roofline",
                                       "conv_correctness"}
    for plot in plots:  # SVG, or PNG where a figure draws many points
        assert plot.read_bytes().startswith({".png": b"\x89PNG", ".svg": b"<?xml"}[plot.suffix])
    embedded = html.count("data:image/png;base64,") + html.count("data:image/svg+xml;base64,")
    assert embedded >= len(plots)
    markdown = (quick / "report.md").read_text(encoding="utf-8")
    assert_links_resolve(markdown, quick)


# --- other benches ----------------------------------------------------------------------------


def test_a_custom_size_runs_exactly_that_size(runs: dict[str, Done]) -> None:
    proc = runs["size"].proc
    assert proc.returncode == 0, describe(proc)
    _, rows = read_csv(runs["size"].run_dir / "results.csv")
    expected = {**notes_size("conv"), "N": 2, "C_in": 3, "H": 12, "W": 12}
    assert {r["case"] for r in rows} == {LAYER.label(expected)}
    assert sorted(r["impl"] for r in rows) == ["builtin", "einsum"]
    for row in rows:
        assert {p: int(row[f"p_{p}"]) for p in LAYER.params} == expected


def test_impl_file_with_a_correct_impl(runs: dict[str, Done]) -> None:
    proc = runs["impl-file-good"].proc
    assert proc.returncode == 0, describe(proc)
    _, rows = read_csv(runs["impl-file-good"].run_dir / "results.csv")
    mine = [r for r in rows if r["impl"] == "mine"]
    assert sorted(r["mode"] for r in mine) == ["fwd", "fwdbwd"]
    for row in mine:
        assert row["status"] == "ok", row["reason"]
    assert {r["impl"] for r in rows} == {"builtin", "mine"}


def test_impl_file_with_a_wrong_impl_fails_the_run(runs: dict[str, Done]) -> None:
    proc = runs["impl-file-wrong"].proc
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr
    _, rows = read_csv(runs["impl-file-wrong"].run_dir / "results.csv")
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["nobias"]["status"] == "incorrect"
    assert by_impl["nobias"]["reason"]
    assert float(by_impl["nobias"]["median_ms"]) > 0  # a wrong impl is still timed
    assert by_impl["builtin"]["status"] == "ok"


def test_compiled_case_records_compile_time(runs: dict[str, Done]) -> None:
    proc = runs["compile"].proc
    assert proc.returncode == 0, describe(proc)
    _, rows = read_csv(runs["compile"].run_dir / "results.csv")
    by_compile = {r["compile"]: r for r in rows}
    assert set(by_compile) == {"none", "default"}
    compiled = by_compile["default"]
    assert compiled["impl"] == "builtin"
    assert compiled["status"] == "ok", compiled["reason"]
    assert compiled["compile_s"] != ""
    assert float(compiled["compile_s"]) >= 0
    assert by_compile["none"]["compile_s"] == ""  # eager: nothing compiled


def test_profile_writes_ops_and_traces(runs: dict[str, Done]) -> None:
    proc = runs["profile"].proc
    assert proc.returncode == 0, describe(proc)
    run_dir = runs["profile"].run_dir
    header, ops = read_csv(run_dir / "ops.csv")
    assert header == list(OPS_COLUMNS)
    _, rows = read_csv(run_dir / "results.csv")
    assert {r["mode"] for r in ops} == {r["mode"] for r in rows} == {"fwd", "fwdbwd"}
    assert any("conv" in r["op"] for r in ops)
    traces = sorted((run_dir / "profile").rglob("*.pt.trace.json"))
    assert len(traces) == len(rows)
    for trace in traces:
        data = json.loads(trace.read_text(encoding="utf-8"))
        assert "traceEvents" in data
        assert data["traceEvents"]


# --- bad input: exit 2, one line, no traceback ------------------------------------------------


ERROR_NAMES = sorted(_error_commands(Path("unused")))


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_bad_input_exits_2_with_one_line(errors: dict[str, Done], name: str) -> None:
    one_line_error(errors[name].proc)
    assert not list(errors[name].out.iterdir())  # nothing was run or written


@pytest.mark.parametrize(("name", "words"), [("unknown-layer", "nolayer"),
                                             ("unknown-option", "--bogus")])
def test_bad_input_from_the_entry_point_is_one_line(jobs: Jobs, name: str, words: str) -> None:
    """``python cli.py`` itself: one line on stderr, exit 2, no traceback, nothing written."""
    assert words in one_line_error(jobs[name].proc)
    assert not list(jobs[name].out.iterdir())


@pytest.mark.parametrize("name", [*sorted(f"impl-file-{Path(n).stem}" for n in BAD_FILES),
                                  "impl-file-missing"])
def test_impl_file_errors_name_the_file(errors: dict[str, Done], name: str) -> None:
    """A clear line: which of the user's files is at fault."""
    proc = errors[name].proc
    stem = name.removeprefix("impl-file-")
    assert f"{stem}.py" in proc.stderr, describe(proc)


@pytest.mark.parametrize(("name", "words"), [
    ("unknown-layer", "nolayer"),
    ("unknown-impl", "nope"),
    ("unknown-device", "tpu"),
    ("unknown-dtype", "float8"),
    ("unknown-preset", "huge"),
    ("malformed-size-value", "abc"),
    ("malformed-size-item", "N8"),
    ("nonsense-size", "k=100"),
    ("negative-size", "N must be >= 1"),
    ("heads-do-not-divide", "not divisible by n_head"),
    ("longer-than-n-position", "n_position"),
    ("no-layer", "LAYER"),
    ("resume-not-a-run", "--resume"),
    ("precision-zero", "--precision"),
    ("precision-not-a-fraction", "--precision"),
    ("cap-below-minimum", "--max-time"),
    ("check-cap-below-minimum", "--max-time"),
])
def test_bad_input_message_names_the_culprit(errors: dict[str, Done], name: str,
                                            words: str) -> None:
    assert words in errors[name].proc.stderr, describe(errors[name].proc)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_says_so(errors: dict[str, Done]) -> None:
    proc = errors["cuda-without-gpu"].proc
    assert "cuda" in proc.stderr.lower()
    assert proc.returncode == 2


def test_a_malformed_cuda_index_is_a_reason_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with a GPU, ``--device cuda:x`` must still be bad input (exit 2)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device("cuda:0").problem() == ""
    assert "cuda:3" in device("cuda:3").problem()
    for name in ("cuda:x", "cuda:-1"):
        problem = device(name).problem()  # a one-line reason, not an exception
        assert name in problem
