"""The benches run end to end in a tiny mode and return finite figures (not speed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from workbench.bench import BENCHES
from workbench.bench.optimizers import tokens_to_reach


def _finite(result: dict, keys: list[str]) -> None:
    for key in keys:
        assert key in result, key
        value = result[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)


def test_registered() -> None:
    assert {"store", "muon", "maxlogit", "optimizers"} <= set(BENCHES)


def test_muon_tiny() -> None:
    r = BENCHES["muon"](quick=True, progress=None, tiny=True)
    _finite(r, ["ours_ms", "torch_muon_ms", "adamw_ms", "ratio_vs_torch", "ours_bf16_ms",
                "ratio_bf16_vs_torch", "matrices", "params"])
    assert r["ours_ms"] > 0 and r["torch_muon_ms"] > 0 and r["adamw_ms"] > 0
    assert r["ratio_vs_torch"] == pytest.approx(r["ours_ms"] / r["torch_muon_ms"], rel=1e-2)
    assert r["matrices"] == 7  # one block: q, k, v, o, gate, up, down
    assert r["ns_dtype"] in ("float32", "bfloat16")
    assert r["device"]


def test_maxlogit_tiny() -> None:
    r = BENCHES["maxlogit"](quick=True, progress=None, tiny=True)
    _finite(r, ["with_ms", "without_ms", "overhead"])
    assert r["with_ms"] > 0 and r["without_ms"] > 0
    assert r["overhead"] == pytest.approx(r["with_ms"] / r["without_ms"] - 1, abs=1e-3)
    assert r["backend"] in ("sdpa", "flex")


def test_optimizers_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_DATA_CACHE", str(tmp_path / "data-cache"))
    r = BENCHES["optimizers"](quick=True, progress=None, tiny=True)
    _finite(r, ["muon_val_loss", "adamw_val_loss", "tokens", "lr_muon", "lr_adamw", "steps"])
    ratio = r["muon_tokens_to_adamw_loss_ratio"]
    assert ratio is None or (math.isfinite(ratio) and 0 <= ratio <= 1)
    assert r["tokens"] == r["steps"] * r["batch_size"] * r["seq_len"]
    assert r["muon_curve"][0][0] == 0 and r["muon_curve"][-1][0] == r["tokens"]
    assert r["adamw_curve"][-1][1] == r["adamw_val_loss"]
    # both arms start from the same weights and evaluate the same batches
    assert r["muon_curve"][0][1] == r["adamw_curve"][0][1]


def test_tokens_to_reach() -> None:
    curve = [(0, 5.0), (100, 3.0), (200, 2.0)]
    assert tokens_to_reach(curve, 2.5) == pytest.approx(150.0)
    assert tokens_to_reach(curve, 3.0) == pytest.approx(100.0)
    assert tokens_to_reach(curve, 6.0) == 0.0
    assert tokens_to_reach(curve, 1.9) is None


def test_engine_hf_tiny() -> None:
    """Our engine and transformers' generate on the same checkpoint: same greedy tokens."""
    r = BENCHES["engine-hf"](quick=True, progress=None, tiny=True)
    assert r["outputs_match"] == 1.0
    assert r["ours_tok_s"] > 0 and r["transformers_tok_s"] > 0 and r["speedup"] > 0
    assert r["tokens"] == r["requests"] * r["new_tokens"]
