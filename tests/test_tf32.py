"""TF32: the flags read under either of torch's APIs, the precision of a case keyed on the library
its float32 math goes through (tolerance, roofline peak, the row's ``tf32`` column), and bfloat16
counted only where it is native.

The CPU build of torch keeps the CUDA flags, so the crash of mixing the legacy ``allow_tf32`` with
``fp32_precision`` reproduces here; the ``tf32_state`` fixture puts every flag back after a test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from impls import REGISTRY
from impls.registry import LIBRARIES, RegistryError, register_impl
from reports import plots
from reports.record import Case, CaseResult, Samples
from reports.schema import load_run, precision
from suites import correctness, devices
from suites.correctness import TOLERANCES, tolerance_key
from suites.devices import tf32_flags
from suites.environment import machine_info
from suites.presets import notes_size
from tests._runs import FakeCase, fake_run

OWN = ("generic", "cuda", "matmul")  # settings whose own value can be read; parents first
CUDNN = ("conv", "rnn")  # their "default" state cannot be set again: put back as resolved
CUBLAS, CUDNN_CONV = ("cublas",), ("cudnn_conv",)


@pytest.fixture
def tf32_state() -> Iterator[None]:
    """Every TF32 flag put back after the test: the legacy ones first (their setters also write
    the new API's), then with the new API each setting's own value, and cuDNN's as they read."""
    legacy = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    own = {s: devices._own_fp32_precision(s) for s in OWN}
    cudnn = {s: devices.fp32_precision(s) for s in CUDNN}
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(legacy[0])
        torch.backends.cudnn.allow_tf32 = legacy[1]
        for setting in OWN:
            devices._fp32_holder(setting).fp32_precision = own[setting]
        for setting in CUDNN:
            if devices.fp32_precision(setting) != cudnn[setting]:
                devices._fp32_holder(setting).fp32_precision = cudnn[setting]
        # readable again: no mix of the two APIs is left behind
        assert torch.backends.cuda.matmul.allow_tf32 is (own["matmul"] == "tf32")
        assert torch.backends.cudnn.allow_tf32 is legacy[1]


def _keys(dtype: torch.dtype = torch.float32, device: str = "cuda") -> dict[str, str]:
    return {lib: tolerance_key(dtype, device, (lib,)) for lib in LIBRARIES}


# --- reading the flags --------------------------------------------------------------------------


def test_defaults_cublas_runs_ieee_float32_and_cudnn_tf32(tf32_state: None) -> None:
    flags = tf32_flags()
    assert flags["cuda_matmul_allow_tf32"] is False
    assert flags["cudnn_conv_allow_tf32"] is flags["cudnn_rnn_allow_tf32"] is True
    assert flags["float32_matmul_precision"] == "highest"
    assert _keys() == {"cublas": "float32", "cudnn_conv": "tf32", "cudnn_rnn": "tf32"}
    assert tolerance_key(torch.float32, "cuda:1", ("cudnn_conv", "cublas")) == "tf32"


def test_the_new_api_is_read_where_the_legacy_flag_raises(tf32_state: None) -> None:
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 -- the crash this guards against
    flags = tf32_flags()
    assert flags["cuda_matmul_allow_tf32"] is True
    assert flags["float32_matmul_precision"] is None  # torch refuses to say
    assert machine_info(["cpu"])["tf32"] == flags  # meta.json is written all the same
    assert _keys()["cublas"] == "tf32"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert _keys()["cublas"] == "float32"


def test_cudnn_conv_and_rnn_are_read_apart(tf32_state: None) -> None:
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    with pytest.raises(RuntimeError):
        torch.backends.cudnn.allow_tf32  # noqa: B018 -- conv and rnn disagree: legacy raises
    flags = tf32_flags()
    assert (flags["cudnn_conv_allow_tf32"], flags["cudnn_rnn_allow_tf32"]) == (False, True)
    assert flags["cudnn_allow_tf32"] is True  # one of them may
    assert _keys() == {"cublas": "float32", "cudnn_conv": "float32", "cudnn_rnn": "tf32"}


def test_an_inherited_setting_counts(tf32_state: None) -> None:
    torch.backends.cuda.matmul.fp32_precision = "none"  # inherit
    torch.backends.fp32_precision = "ieee"  # generic: what a CUDA op left at "none" follows
    assert not devices.tf32_allowed("cublas")
    torch.backends.cudnn.fp32_precision = "tf32"  # cuda, all ops: overrides generic
    assert devices.tf32_allowed("cublas")


@pytest.mark.parametrize("switch", ["allow_tf32", "set_float32_matmul_precision"])
def test_the_legacy_api_still_counts(tf32_state: None, switch: str) -> None:
    if switch == "allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_float32_matmul_precision("high")
    assert tf32_flags()["cuda_matmul_allow_tf32"] is True
    assert _keys()["cublas"] == "tf32"
    torch.backends.cudnn.allow_tf32 = False
    assert _keys() == {"cublas": "tf32", "cudnn_conv": "float32", "cudnn_rnn": "float32"}


def test_the_cpu_and_other_dtypes_never_count_as_tf32(tf32_state: None) -> None:
    torch.backends.fp32_precision = "tf32"
    assert set(_keys(device="cpu").values()) == {"float32"}
    assert set(_keys(torch.bfloat16).values()) == {"bfloat16"}


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize(("parent", "matmul"), [
    ("none", "none"), ("ieee", "none"), ("tf32", "none"), ("none", "tf32"), ("tf32", "ieee")])
def test_matmul_tf32_puts_back_exactly_what_was_there(tf32_state: None, enabled: bool,
                                                      parent: str, matmul: str) -> None:
    torch.backends.cudnn.fp32_precision = parent
    torch.backends.cuda.matmul.fp32_precision = matmul
    cudnn = [devices.fp32_precision(s) for s in CUDNN]
    with devices.matmul_tf32(enabled):
        assert devices.tf32_allowed("cublas") is enabled
        assert [devices.fp32_precision(s) for s in CUDNN] == cudnn  # untouched
    assert [devices.fp32_precision(s) for s in CUDNN] == cudnn
    assert devices._own_fp32_precision("matmul") == matmul
    assert devices._own_fp32_precision("cuda") == parent
    torch.backends.cudnn.fp32_precision = "ieee" if parent == "tf32" else "tf32"
    # an inherited "none" still follows its parent; an own value does not
    expected = torch.backends.cudnn.fp32_precision if matmul == "none" else matmul
    assert devices.fp32_precision("matmul") == expected


# --- which library an implementation goes through ----------------------------------------------


def test_implementations_declare_their_library() -> None:
    assert set(devices.TF32_SETTINGS) == set(LIBRARIES)
    assert REGISTRY.impl("conv", "builtin").libraries == CUDNN_CONV
    assert REGISTRY.impl("conv", "im2col").libraries == CUBLAS
    assert REGISTRY.impl("linear", "builtin").libraries == CUBLAS
    assert set(REGISTRY.impl("rnn", "builtin").libraries) == {"cudnn_rnn", "cublas"}
    assert set(REGISTRY.impl("cnn", "builtin").libraries) == {"cudnn_conv", "cublas"}  # parts
    assert REGISTRY.impl("cnn", "im2col").libraries == CUBLAS
    assert REGISTRY.impl("encoder", "matmul").libraries == CUBLAS  # derived from attention


def test_an_unknown_library_is_refused() -> None:
    with REGISTRY.scoped(), pytest.raises(RegistryError, match=r"'cudnn'.*choose from"):
        register_impl("conv", "mine", libraries=("cudnn",))(lambda **kw: None)


def test_check_judges_by_the_libraries_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    def key(dtype: torch.dtype, device: str, libraries: Any = None) -> str:
        asked.append(libraries)
        return "float32"

    monkeypatch.setattr(correctness, "tolerance_key", key)
    layer, impl = REGISTRY.layer("linear"), REGISTRY.impl("linear", "builtin")
    params = {p: 2 for p in layer.params}
    verdict, _ = correctness.check(impl.fn, layer, params, [0], torch.float32, "cpu", "fwd",
                                   CUDNN_CONV)
    assert verdict.ok and asked == [CUDNN_CONV]


def test_tf32_is_twenty_times_looser_than_float32() -> None:
    assert TOLERANCES["tf32"][0] == pytest.approx(20 * TOLERANCES["float32"][0])


# --- the precision of a row ---------------------------------------------------------------------


def test_precision_follows_the_row_and_old_runs_the_run_flags() -> None:
    assert precision("float32", "cuda:1", True) == "tf32"
    assert precision("float32", "cuda", 1.0) == "tf32"
    assert precision("float32", "cuda", 0.0) == "float32"
    assert precision("float32", "cuda", math.nan) == "float32"  # not recorded
    assert precision("float32", "cuda", None) == "float32"
    assert precision("float32", "cpu", True) == "float32"
    assert precision("bfloat16", "cuda", True) == "bfloat16"
    assert precision("float32", "cuda", {"cudnn_allow_tf32": True}) == "tf32"  # old run: any


def _cuda_result(tf32: bool | None) -> CaseResult:
    case = Case("linear", "im2col", "none", (("N", 1),), "cuda", "float32", "fwd", "N1")
    return CaseResult(case, samples=Samples((1e-3,), 1), flops=10**9, bytes=1, tf32=tf32)


@pytest.mark.parametrize(("tf32", "peak"), [(False, 100.0), (True, 800.0), (None, 800.0)])
def test_the_roofline_divides_by_the_peak_of_the_row(tf32: bool | None, peak: float) -> None:
    ceilings = {"matmul_gflops": {"float32": 100.0, "tf32": 800.0}, "copy_gbps": 1e6}
    result = _cuda_result(tf32)
    # the run's defaults (cuDNN allowed TF32): a row that says nothing is taken as TF32
    result.relate(None, ceilings, {"cuda_matmul_allow_tf32": False, "cudnn_allow_tf32": True})
    assert result.roofline_frac == pytest.approx(1000.0 / peak)
    cell = result.row()["tf32"]
    assert math.isnan(cell) if tf32 is None else cell == int(tf32)


def test_the_ceiling_of_a_facet_bounds_its_rows() -> None:
    table = {"float32": 100.0, "tf32": 800.0}
    meta = {"machine": {"tf32": {"cuda_matmul_allow_tf32": False, "cudnn_allow_tf32": True}}}
    rows = pd.DataFrame({"impl": ["im2col", "builtin"], "tf32": [0.0, 0.0]})
    assert plots._peak_key("cuda", "float32", table, meta, rows) == "float32"
    rows.loc[1, "tf32"] = 1.0  # the cuDNN builtin ran in TF32
    assert plots._peak_key("cuda", "float32", table, meta, rows) == "tf32"
    old = rows.assign(tf32=math.nan)  # a run before the column: the run's flags
    assert plots._peak_key("cuda", "float32", table, meta, old) == "tf32"
    assert plots._peak_key("cuda", "float32", {"float32": 100.0}, meta, rows) == "float32"


def test_a_run_without_the_tf32_column_loads(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "old", [FakeCase("builtin", seconds=[1e-3] * 5)])
    results = pd.read_csv(run / "results.csv")
    results.drop(columns="tf32").to_csv(run / "results.csv", index=False)
    frame, _ = load_run(run)
    assert frame["tf32"].isna().all()


# --- bfloat16: native only ----------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_counts_only_native_support_of_the_named_device(
        monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    current: list[int] = []
    calls: list[tuple[dict[str, Any], list[int]]] = []

    class Selected:
        def __init__(self, where: torch.device) -> None:
            self.index = where.index

        def __enter__(self) -> None:
            current.append(self.index)

        def __exit__(self, *exc: object) -> None:
            current.pop()

    def supported(**kwargs: Any) -> bool:
        calls.append((kwargs, list(current)))
        return native

    monkeypatch.setattr(torch.cuda, "device", Selected)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda where: "Old GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    problem = devices.device("cuda:1").dtype_problem(torch.bfloat16)
    assert calls == [({"including_emulation": False}, [1])]
    assert (problem == "") is native
    assert native or "Old GPU" in problem
    assert devices.device("cuda:1").dtype_problem(torch.float32) == ""


def test_bfloat16_on_an_absent_gpu_says_so() -> None:
    assert "no CUDA GPU" in devices.device("cuda:1").dtype_problem(torch.bfloat16)


# --- on a GPU (skipped without one) ------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize(("layer", "impl"), [("linear", "builtin"), ("linear", "matmul"),
                                             ("conv", "builtin"), ("conv", "im2col")])
def test_default_flags_pass_the_tolerance_of_each_library(tf32_state: None, layer: str,
                                                          impl: str) -> None:
    """cuBLAS at float32's tolerance, cuDNN at TF32's: what the default flags compute in."""
    found, registered = REGISTRY.layer(layer), REGISTRY.impl(layer, impl)
    verdict, _ = correctness.check(registered.fn, found, notes_size(layer), [0, 1],
                                   torch.float32, "cuda", "fwd", registered.libraries)
    assert verdict.ok, verdict.problems


@needs_cuda
def test_bfloat16_runs_where_the_gpu_has_it_natively() -> None:
    native = torch.cuda.get_device_capability(0)[0] >= 8
    assert (devices.device("cuda:0").dtype_problem(torch.bfloat16) == "") is native
