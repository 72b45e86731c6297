"""The restricted SDPA backends (sdpa_flash, sdpa_efficient, sdpa_cudnn): a case the backend
refuses is ``skipped`` with torch's reasons, not an ``error`` whose reasons went to stderr.

This CPU build's ``torch.backends.cuda.can_use_*`` say no to everything and give no reason, so
the checks are replaced by stand-ins that warn as a build that routes its reasons to Python
would; SDPA's own kernel selection on the CPU (flash: q, k and v need the same last dimension)
gives real reasons, captured as on a GPU. The GPU cases are in tests/test_attention.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch.nn.attention import SDPBackend

from impls import REGISTRY, Unsupported, register_impl
from impls.attention import LAYER
from impls.sdpa_backends import (
    CUDNN,
    EFFICIENT,
    FLASH,
    Backend,
    refusal_text,
    under_heading,
)
from suites.cases import new_case
from suites.config import BenchConfig, TimingConfig
from suites.runner import run_case

BACKENDS = {b.impl: b for b in (FLASH, EFFICIENT, CUDNN)}
#: what torch's warning handler appends to a C++ warning
WHERE = " (Triggered internally at /pytorch/aten/src/ATen/native/transformers/sdp_utils.cpp:1.)"


def _qkv(d_k: int = 8, d_v: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 2, 5, d_k, generator=g), torch.randn(2, 2, 7, d_k, generator=g),
            torch.randn(2, 2, 7, d_v, generator=g))


def _stand_in(answer: bool, reasons: list[str], seen: list[dict[str, object]]
              ) -> Callable[..., bool]:
    """A ``can_use_*`` that answers ``answer``, warns ``reasons`` (as torch words them) when
    asked with debug, and records what it was asked and which backends were enabled."""

    def can_use(params: torch.backends.cuda.SDPAParams, debug: bool = False) -> bool:
        seen.append({"params": params, "debug": debug,
                     "enabled": (torch.backends.cuda.flash_sdp_enabled(),
                                 torch.backends.cuda.mem_efficient_sdp_enabled(),
                                 torch.backends.cuda.cudnn_sdp_enabled(),
                                 torch.backends.cuda.math_sdp_enabled())})
        if debug:
            for reason in reasons:
                warnings.warn(reason + WHERE, UserWarning, stacklevel=2)
        return answer

    return can_use


@pytest.mark.parametrize("impl", sorted(BACKENDS))
def test_a_refused_case_is_unsupported_with_the_checks_reasons(
        impl: str, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder) -> None:
    backend, seen = BACKENDS[impl], []
    reason = "Mem efficient attention requires last dimension of inputs to be divisible by 8."
    monkeypatch.setattr(torch.backends.cuda, backend.check,
                        _stand_in(False, [reason, "a second one", reason], seen))
    q, k, v = _qkv()
    mask = torch.ones(5, 7, dtype=torch.bool).tril()
    with pytest.raises(Unsupported) as refused:
        REGISTRY.impl("attention", impl).fn(q, k, v, None if impl == "sdpa_flash" else mask, 2.0)
    # torch's words, each once, without where in C++ they were raised
    assert str(refused.value) == (f"{impl}: the {backend.title} backend refuses this case: "
                                  f"{reason}; a second one")
    assert not recwarn.list  # captured, not shown
    asked = seen[0]["params"]
    assert asked.query is q and asked.key is k and asked.value is v
    assert asked.attn_mask is (None if impl == "sdpa_flash" else mask)
    assert (asked.dropout, asked.is_causal, asked.enable_gqa) == (0.0, False, False)
    # asked under the restriction the call runs with: this backend alone, no math fallback
    enabled = dict(zip((FLASH.impl, EFFICIENT.impl, CUDNN.impl, "math"), seen[0]["enabled"],
                       strict=True))
    assert enabled == {name: name == impl for name in enabled}
    assert [s["debug"] for s in seen] == [False, True]  # quietly first; why, on a refusal


def test_an_accepted_case_runs_on_the_backend_and_matches_the_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []
    monkeypatch.setattr(torch.backends.cuda, FLASH.check, _stand_in(True, ["never"], seen))
    q, k, v = (t.double() for t in _qkv())
    out = REGISTRY.impl("attention", "sdpa_flash").fn(q, k, v, None, 2.0)
    expected, _ = LAYER.reference(q, k, v, None, 2.0)
    torch.testing.assert_close(out, expected)
    assert [s["debug"] for s in seen] == [False]  # one quiet question per call, no more


def test_the_kernel_selections_own_reasons_are_kept_for_the_refusing_backend(
        capfd: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder) -> None:
    """Real torch: SDPA's CPU selection refuses flash for d_k != d_v and says why as Python
    warnings, which the refusal keeps (this build's can_use_flash_attention says no)."""
    q, k, v = _qkv(d_k=8, d_v=4)
    with pytest.raises(Unsupported) as refused:
        REGISTRY.impl("attention", "sdpa_flash").fn(q, k, v, None, 2.0)
    assert str(refused.value) == (
        "sdpa_flash: the flash backend refuses this case: Flash attention requires q,k,v to "
        "have the same last dimension. Got Query.size(-1): 8, Key.size(-1): 8, "
        "Value.size(-1): 4 instead.")
    assert not recwarn.list and capfd.readouterr().err == ""


@pytest.mark.parametrize("impl", sorted(BACKENDS))
def test_the_real_checks_on_cpu_tensors_skip_with_a_plain_reason(impl: str) -> None:
    q, k, v = _qkv()
    with pytest.raises(Unsupported, match=f"^{impl}: the .* backend refuses this case: it "
                                          "runs on CUDA, these tensors are on cpu$"):
        REGISTRY.impl("attention", impl).fn(q, k, v, None, 2.0)


def test_a_refusal_without_any_reason_says_so_and_names_the_backends_limits() -> None:
    """torch warns some reasons once per process (cuDNN's key length 1): the second such case
    on a GPU gets no reason from torch, and a message that says so."""
    text = refusal_text(CUDNN, [], "cuda")
    assert text.startswith("sdpa_cudnn: the cuDNN backend refuses this case (torch.backends."
                           "cuda.can_use_cudnn_attention is False; torch gave no reason")
    assert text.endswith(f"its usual limits: {CUDNN.limits}") and "len_k > 1" in text
    assert refusal_text(FLASH, ["a", "b"], "cuda") == (
        "sdpa_flash: the flash backend refuses this case: a; b")
    assert refusal_text(EFFICIENT, [], "mps").endswith("it runs on CUDA, these tensors are "
                                                      "on mps")


def test_the_reasons_under_a_backends_heading_are_its_own() -> None:
    said = ["Memory efficient kernel not used because:", "Mem efficient: divisible by 8",
            "Flash attention kernel not used because:", "Flash attention has been runtime "
            "disabled.", "cuDNN attention kernel not used because:", "cudnn: len_k 1",
            "cudnn: head_dim"]
    assert under_heading(said, EFFICIENT.heading) == ["Mem efficient: divisible by 8"]
    assert under_heading(said, FLASH.heading) == ["Flash attention has been runtime disabled."]
    assert under_heading(said, CUDNN.heading) == ["cudnn: len_k 1", "cudnn: head_dim"]
    assert under_heading(said[2:4], EFFICIENT.heading) == []
    assert {b.sdp for b in BACKENDS.values()} == {SDPBackend.FLASH_ATTENTION,
                                                  SDPBackend.EFFICIENT_ATTENTION,
                                                  SDPBackend.CUDNN_ATTENTION}


def test_under_torch_compile_a_refusal_is_still_unsupported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """dynamo cannot trace SDPAParams: the question is asked outside the graph, and a refusal
    is the same ``Unsupported``, not a dynamo error."""
    monkeypatch.setattr(torch.backends.cuda, EFFICIENT.check, _stand_in(False, ["nope"], []))
    torch._dynamo.reset()
    compiled = torch.compile(REGISTRY.impl("attention", "sdpa_efficient").fn, backend="eager")
    with pytest.raises(Unsupported) as refused:
        compiled(*_qkv(), None, 2.0)
    assert str(refused.value) == "sdpa_efficient: the efficient backend refuses this case: nope"
    torch._dynamo.reset()


def test_the_runner_records_a_refused_case_as_skipped_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The case of issue 17: a status ``skipped`` with torch's reason, not ``error``."""
    reason = "Mem efficient attention requires last dimension of inputs to be divisible by 8."
    monkeypatch.setattr(torch.backends.cuda, EFFICIENT.check, _stand_in(False, [reason], []))
    config = BenchConfig(layers=("attention",), trials=1,
                         timing=TimingConfig(min_time_s=0.01, min_samples=2))
    size = dict(zip(LAYER.params, (2, 2, 5, 7, 12, 12, 0), strict=True))
    with REGISTRY.scoped():  # the CUDA-only implementation, allowed on the CPU
        register_impl("attention", "efficient_here", devices=("cpu",))(
            REGISTRY.impl("attention", "sdpa_efficient").fn)
        result = run_case(new_case("attention", "efficient_here", "none", size, "cpu",
                                   "float32", "fwd"), config)
    assert result.status == "skipped"
    assert result.reason == f"sdpa_efficient: the efficient backend refuses this case: {reason}"


def test_every_restricted_backend_is_described() -> None:
    for impl, backend in BACKENDS.items():
        assert isinstance(backend, Backend) and backend.impl == impl
        assert callable(getattr(torch.backends.cuda, backend.check))
        assert backend.heading.endswith("not used because:") and backend.limits
        assert "skipped, with torch's reasons" in REGISTRY.impl("attention", impl).notes
