"""``calibrate --device cuda:N`` on this CPU: torch.cuda's calls replaced by recorders, so what
the measurement runs inside (the device's context, the TF32 setting) and what it leaves behind
(the allocator's cache, the user's TF32 setting) can be checked without a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

from suites import calibration, devices
from suites.devices import Device


@dataclass
class FakeCuda:
    """The torch.cuda calls the calibration makes, recorded with the device current at each."""

    current: list[int] = field(default_factory=lambda: [0])
    measured: list[tuple[str, int, bool]] = field(default_factory=list)  # what, device, tf32
    emptied: list[int] = field(default_factory=list)  # the device whose cache was emptied

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        class Selected:
            def __init__(self, where: torch.device) -> None:
                self.index = fake.current[-1] if where.index is None else where.index

            def __enter__(self) -> None:
                fake.current.append(self.index)

            def __exit__(self, *exc: object) -> None:
                fake.current.pop()

        monkeypatch.setattr(torch.cuda, "device", Selected)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: self.emptied.append(self.now))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda where=None: "Fake GPU")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kwargs: True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(calibration, "matmul_gflops", self.matmul_gflops)
        monkeypatch.setattr(calibration, "copy_gbps", self.copy_gbps)

    @property
    def now(self) -> int:
        return self.current[-1]

    def matmul_gflops(self, where: Device, dtype: torch.dtype) -> float:
        self.measured.append((str(dtype), self.now, devices.tf32_allowed("cublas")))
        return 1000.0

    def copy_gbps(self, where: Device) -> float:
        self.measured.append(("copy", self.now, devices.tf32_allowed("cublas")))
        return 2000.0


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCuda]:
    fake = FakeCuda()
    fake.install(monkeypatch)
    saved = devices._own_fp32_precision("matmul")
    try:
        yield fake
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


def test_measures_inside_the_device_and_empties_its_cache(cuda: FakeCuda) -> None:
    measured = calibration.measure("cuda:1")
    assert {device for _, device, _ in cuda.measured} == {1}  # never on the current cuda:0
    assert cuda.emptied == [1]
    assert cuda.current == [0]  # the context was left
    assert measured["matmul_gflops"] == {"float32": 1000.0, "tf32": 1000.0,
                                         "float64": 1000.0, "bfloat16": 1000.0,
                                         "float16": 1000.0}
    assert measured["copy_gbps"] == 2000.0 and measured["device_name"] == "Fake GPU"


@pytest.mark.parametrize("setting", ["tf32", "ieee", "none"])
def test_float32_and_tf32_peaks_whatever_the_user_set_which_is_put_back(
        cuda: FakeCuda, setting: str) -> None:
    torch.backends.cuda.matmul.fp32_precision = setting
    calibration.measure("cuda")
    float32 = [tf32 for what, _, tf32 in cuda.measured if what == "torch.float32"]
    assert float32 == [False, True]  # the float32 peak, then the tf32 one
    assert [tf32 for what, _, tf32 in cuda.measured if what != "torch.float32"] == [
        setting == "tf32"] * 4  # the other dtypes and the copy: as the user set it
    assert devices._own_fp32_precision("matmul") == setting


def test_a_failed_measurement_still_leaves_the_device_and_frees_its_cache(
        cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(where: Device) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(calibration, "copy_gbps", broken)
    with pytest.raises(torch.OutOfMemoryError):
        calibration.measure("cuda:1")
    assert cuda.emptied == [1] and cuda.current == [0]


def test_the_cpu_has_no_device_context_or_cache(cuda: FakeCuda) -> None:
    measured = calibration.measure("cpu")
    assert {device for _, device, _ in cuda.measured} == {0} and cuda.emptied == []
    assert [what for what, _, _ in cuda.measured].count("torch.float32") == 1
    assert "tf32" not in measured["matmul_gflops"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_cache_is_handed_back_and_tf32_put_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration, "MATMUL_SIZES", (256, 512))  # short: the peak is not asked
    monkeypatch.setattr(calibration, "TIMER_S", 0.01)
    monkeypatch.setattr(devices.CudaDevice, "copy_bytes", 64 << 20)
    torch.cuda.empty_cache()
    before, own = torch.cuda.memory_reserved(0), devices._own_fp32_precision("matmul")
    measured = calibration.measure("cuda:0")
    assert torch.cuda.memory_reserved(0) <= before  # nothing kept cached
    assert devices._own_fp32_precision("matmul") == own
    assert {"float32", "tf32"} <= set(measured["matmul_gflops"])
