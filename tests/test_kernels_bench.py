"""`wb bench kernels` on this CPU: it says the GPU figures need a GPU and runs every
kernel under the Triton interpreter against its torch reference. The CUDA timing path
cannot run here (no GPU); its peak table is checked on its own."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import wb
from workbench.bench.kernels import device_peak

TOLERANCE = 1e-4  # fp32 at these sizes; bf16 NS equals the bf16 reference exactly


def test_bench_kernels_on_a_cpu_checks_every_kernel() -> None:
    pytest.importorskip("triton", reason="triton is in the dev extra (.ci/run installs it)")
    if sys.platform != "linux":
        pytest.skip("triton ships Linux wheels only")
    r = wb("bench", "kernels", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["device"] == "cpu" and "need a CUDA GPU" in figures["gpu_figures"]
    errors = {k: v for k, v in figures.items() if k.startswith("max_abs_err")}
    names = " ".join(errors)
    for kernel in ("ns", "attention out", "attention max_logit", "attention dq", "logprobs",
                   "entropy"):
        assert kernel in names, names
    assert all(0 <= v < TOLERANCE for v in errors.values()), errors


def test_peaks_by_device_name() -> None:
    assert device_peak("NVIDIA H100 80GB HBM3") == (989.0, 3.35)
    assert device_peak("NVIDIA H200") == (989.0, 4.8)
    assert device_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert device_peak("Some Other GPU") is None
