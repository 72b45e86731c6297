"""CUDA: implementations, timing and the command line on a GPU (skipped cleanly without one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from impls import REGISTRY
from reports.schema import STATUSES
from suites.config import TimingConfig
from suites.correctness import check
from suites.devices import device
from suites.timing import measure
from tests._cli import describe, only_run_dir, read_csv, run_cli

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LAYER = REGISTRY.layer("conv")
IMPLS = REGISTRY.impls("conv")
IMPL_IDS = [impl.name for impl in IMPLS]
TINY = {"N": 1, "C_in": 2, "C_out": 2, "H": 6, "W": 5, "k": 3, "stride": 2, "padding": 1}
MEDIUM = {"N": 8, "C_in": 16, "C_out": 32, "H": 30, "W": 27, "k": 3, "stride": 2, "padding": 1}
FAST_TIMING = TimingConfig(min_time_s=0.02, warmup_s=0.01, min_samples=5, max_samples=50)


def _dtypes() -> list:
    bf16 = pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.skipif(
        torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False),
        reason="this GPU has no bfloat16"))
    return [pytest.param(torch.float32, id="float32"), bf16]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_impl_matches_reference_on_cuda(impl, dtype: torch.dtype, mode: str) -> None:
    params = TINY if impl.naive else MEDIUM
    with torch.set_grad_enabled(mode == "fwdbwd"):
        verdict, trial = check(impl.fn, LAYER, params, [0, 1, 2], dtype, "cuda", mode)
    assert verdict.ok, verdict.problems
    assert trial.inputs.tensors["x"].device.type == "cuda"


def test_unwritten_output_element_is_flagged_on_cuda() -> None:
    """The poisoned allocator makes an output element nobody wrote visible."""

    def conv_skips_first_row(x, weight, bias, stride, padding):
        N, _, H, W = x.shape
        C_out, _, k, _ = weight.shape
        H_out, W_out = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
        # allocated first, as a kernel writing into its own buffer would
        out = torch.empty(N, C_out, H_out, W_out, dtype=x.dtype, device=x.device)
        full = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        out[:, :, 1:] = full[:, :, 1:]  # row 0 never written
        return out

    with torch.no_grad():
        verdict, _ = check(conv_skips_first_row, LAYER, MEDIUM, [0, 1, 2], torch.float32, "cuda",
                           "fwd")
    assert not verdict.ok


def test_output_on_the_wrong_device_is_flagged() -> None:
    def conv_on_cpu(x, weight, bias, stride, padding):
        return F.conv2d(x, weight, bias, stride=stride, padding=padding).cpu()

    with torch.no_grad():
        verdict, _ = check(conv_on_cpu, LAYER, MEDIUM, [0], torch.float32, "cuda", "fwd")
    assert not verdict.ok
    assert any("cpu" in p for p in verdict.problems), verdict.problems


def test_measure_on_cuda_returns_positive_samples() -> None:
    x = torch.randn(256, 256, device="cuda")
    samples = measure(lambda: x @ x, device("cuda"), FAST_TIMING, threads=1)
    assert len(samples.seconds) >= FAST_TIMING.min_samples
    assert all(s > 0 for s in samples.seconds)
    assert samples.calls_per_sample == 1


def test_cuda_peak_memory_sees_an_allocation() -> None:
    n = 1 << 20
    peak = device("cuda").peak_memory_bytes(
        lambda: torch.empty(n, dtype=torch.float32, device="cuda").fill_(1))
    assert peak >= 4 * n


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cuda_run")
    proc = run_cli("bench", "conv", "--device", "cuda", "--preset", "quick", "--min-time", "0.05",
                   "--quiet", "--out", out, timeout=600)
    assert proc.returncode == 0, describe(proc)
    return only_run_dir(out)


def test_cli_bench_on_cuda(cuda_run: Path) -> None:
    _, rows = read_csv(cuda_run / "results.csv")
    assert rows
    assert {r["device"] for r in rows} == {"cuda"}
    for row in rows:
        assert row["status"] in STATUSES
        assert row["status"] in ("ok", "skipped"), row["reason"]
        if row["status"] == "ok":
            assert float(row["median_ms"]) > 0
            assert float(row["peak_mem_bytes"]) >= 0
    assert any(r["status"] == "ok" for r in rows if r["impl"] == "builtin")


def test_cli_meta_records_gpus_and_tf32(cuda_run: Path) -> None:
    meta = json.loads((cuda_run / "meta.json").read_text(encoding="utf-8"))
    machine = meta["machine"]
    assert machine["gpus"]
    assert machine["gpus"][0]["name"] == torch.cuda.get_device_name(0)
    assert machine["torch_cuda"] == torch.version.cuda
    tf32 = machine["tf32"]
    assert set(tf32) >= {"cuda_matmul_allow_tf32", "cudnn_allow_tf32"}
    assert all(isinstance(tf32[k], bool) for k in ("cuda_matmul_allow_tf32", "cudnn_allow_tf32"))


@pytest.mark.parametrize("device", ["cuda:x", f"cuda:{torch.cuda.device_count() + 3}"])
def test_cli_bad_cuda_index_is_bad_input(device: str) -> None:
    proc = run_cli("bench", "conv", "--device", device)
    assert proc.returncode == 2, describe(proc)
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert "Traceback" not in proc.stderr


def _event_ms(fn: object) -> float:
    """One call of ``fn`` between two events, nothing queued before it."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()  # type: ignore[operator]
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def test_event_samples_time_a_kernel_of_known_length() -> None:
    """``torch.cuda._sleep`` spins the GPU for a number of cycles: the samples of a step that
    sleeps must be the sleep's own length (measured alone, back to back), not the launch or
    the flush before it."""
    torch.cuda._sleep(1_000_000)  # wake the clocks up
    cycles = 1_000_000
    alone = sorted(_event_ms(lambda: torch.cuda._sleep(cycles)) for _ in range(5))[2] / 1e3
    samples = measure(lambda: torch.cuda._sleep(cycles), device("cuda"), FAST_TIMING, threads=1)
    assert 0.8 < samples.median_s / alone < 1.25
    twice = measure(lambda: torch.cuda._sleep(2 * cycles), device("cuda"), FAST_TIMING, 1)
    assert 1.6 < twice.median_s / samples.median_s < 2.5  # linear in the work


def test_back_to_back_wall_time_includes_the_launches() -> None:
    """A few tiny kernels launch during the flush before an event sample and run back to back:
    the event time is the GPU's alone, while a loop of calls waits for every launch."""
    from suites.timing import launch_bound, wall_per_call

    x = torch.zeros(1, device="cuda")

    def tiny() -> None:
        for _ in range(8):
            x.add_(1.0)

    where = device("cuda")
    samples = measure(tiny, where, FAST_TIMING, threads=1)
    wall = wall_per_call(tiny, where, 0.05)
    assert wall > samples.median_s
    heavy = torch.randn(2048, 2048, device="cuda")
    compute = measure(lambda: heavy @ heavy, where, FAST_TIMING, threads=1)
    assert launch_bound(wall_per_call(lambda: heavy @ heavy, where, 0.05),
                        compute.interval.hi, compute.median_s) is None


def test_cuda_graph_timing_replays_the_call() -> None:
    from suites.timing import sampler

    x = torch.randn(256, 256, device="cuda")
    out = torch.empty_like(x)
    contestant = sampler(lambda: torch.matmul(x, x, out=out), device("cuda"),
                         TimingConfig(warmup_s=0.01, cuda_graph=True))
    assert contestant.take() > 0
    torch.cuda.synchronize()
    assert torch.allclose(out, x @ x, rtol=1e-3, atol=1e-3)


def test_cuda_rows_carry_wall_time_and_per_library_tf32(cuda_run: Path) -> None:
    _, rows = read_csv(cuda_run / "results.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(float(r["wall_ms"]) > 0 for r in ok)
    tf32 = {r["impl"]: r["tf32"] for r in ok}
    # torch's defaults: cuDNN convolutions may use TF32, cuBLAS stays at float32
    where = device("cuda")
    assert tf32["builtin"] == str(int(where.uses_tf32(torch.float32, ("cudnn_conv",))))
    assert tf32["im2col"] == str(int(where.uses_tf32(torch.float32, ("cublas",))))


@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA GPU")
def test_an_isolated_oom_on_cuda_is_a_row_and_the_run_goes_on(tmp_path: Path) -> None:
    greedy = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_oom_impl.py"
    proc = run_cli("bench", "conv", "--device", "cuda:0", "--impl", "builtin,greedy",
                   "--isolate", "--impl-file", greedy, "--size", "N=1,C_in=1,C_out=2",
                   "--min-time", "0.02", "--quiet", "--no-report", "--out", tmp_path, timeout=300)
    assert proc.returncode == 0, describe(proc)
    _, rows = read_csv(only_run_dir(tmp_path) / "results.csv")
    assert {r["impl"]: r["status"] for r in rows} == {"builtin": "ok", "greedy": "oom"}
    assert all(r["device"] == "cuda:0" for r in rows)


def test_profiled_cuda_time_counts_each_kernel_once(tmp_path: Path) -> None:
    proc = run_cli("bench", "conv", "--device", "cuda", "--impl", "builtin,im2col", "--size",
                   "N=8,C_in=8,C_out=16", "--profile", "--min-time", "0.02", "--quiet",
                   "--no-report", "--out", tmp_path, timeout=300)
    assert proc.returncode == 0, describe(proc)
    _, ops = read_csv(only_run_dir(tmp_path) / "ops.csv")
    kernels = [o for o in ops if o["device_type"] == "cuda"]
    assert kernels and all(float(o["self_device_us"]) >= 0 for o in kernels)
    assert {o["device_type"] for o in ops} <= {"cpu", "cuda"}
