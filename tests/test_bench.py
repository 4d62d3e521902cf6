"""The benches run end to end in a tiny mode and return finite figures (not speed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers import assert_rounded_ratio
from workbench.bench import BENCHES
from workbench.bench.optimizers import best_lr, efficiency, next_lr, tokens_to_reach
from workbench.kernels.newton_schulz import ns_flops
from workbench.optim import build_optimizers
from workbench.recipes import pretrain as pt
from workbench.spec import load_spec


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
    assert_rounded_ratio(r["ratio_vs_torch"], r["ours_ms"], r["torch_muon_ms"], 3, 4)
    assert r["matrices"] == 7  # one block: q, k, v, o, gate, up, down
    assert r["ns_dtype"] in ("float32", "bfloat16", "mixed")
    assert r["device"]
    # per dtype: bf16 against torch's bf16 (like with like), our fp32 separately
    _finite(r, ["ours_fp32_ms", "ratio_fp32_vs_torch", "auto_decision_ms"])
    for name in ("bf16", "fp32"):
        assert_rounded_ratio(r[f"ratio_{name}_vs_torch"], r[f"ours_{name}_ms"],
                             r["torch_muon_ms"], 3, 4)
    # auto: the decision per shape, with the timings that made it
    assert {tuple(c["shape"]) for c in r["ns_choice"]} == {(64, 64), (192, 64), (64, 192)}
    assert all(set(c["ms"]) == {"float32", "bfloat16"} for c in r["ns_choice"])
    if r["ns_dtype"] != "mixed":  # one dtype everywhere: that figure is auto's
        assert {c["dtype"] for c in r["ns_choice"]} == {r["ns_dtype"]}
        short = {"float32": "fp32", "bfloat16": "bf16"}[r["ns_dtype"]]
        assert r[f"ours_{short}_ms"] == r["ours_ms"]


def test_maxlogit_tiny() -> None:
    r = BENCHES["maxlogit"](quick=True, progress=None, tiny=True)
    _finite(r, ["with_ms", "without_ms", "overhead"])
    assert r["with_ms"] > 0 and r["without_ms"] > 0
    assert_rounded_ratio(r["overhead"], r["with_ms"], r["without_ms"], 3, 4, offset=-1)
    assert r["backend"] in ("sdpa", "flex")


def test_optimizers_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_DATA_CACHE", str(tmp_path / "data-cache"))
    r = BENCHES["optimizers"](quick=True, progress=None, tiny=True)
    _finite(r, ["muon_val_loss", "adamw_val_loss", "tokens", "best_lr_muon", "best_lr_adamw",
                "steps", "flops_per_token", "ns_flops_per_step", "ns_flops_frac"])
    # the sweep: at least 3 lrs per arm (tiny: no extension), the best is the argmin
    for arm in ("muon", "adamw"):
        sweep = r[f"sweep_{arm}"]
        assert len(sweep) >= 3 and [lr for lr, _ in sweep] == sorted(lr for lr, _ in sweep)
        lr, loss = min(sweep, key=lambda row: row[1])
        assert r[f"best_lr_{arm}"] == lr and r[f"{arm}_val_loss"] == loss
        assert r[f"{arm}_curve"][-1][1] == loss
        assert r[f"best_at_edge_{arm}"] == (lr in (sweep[0][0], sweep[-1][0]))
    # the ratios: efficiency() of the best runs (tested on its own below), all or none
    ratios = ("muon_tokens_to_adamw_loss", "muon_tokens_to_adamw_loss_ratio",
              "token_efficiency", "muon_flops_to_adamw_loss_ratio", "compute_efficiency")
    assert len({r[k] is None for k in ratios}) == 1
    ratio = r["muon_tokens_to_adamw_loss_ratio"]
    assert ratio is None or 0 <= ratio <= r["muon_flops_to_adamw_loss_ratio"] and ratio <= 1
    # NS FLOPs, counted from the optimizer's own Muon matrices: one block, d 32, SwiGLU
    # (q, k, v, o 32 x 32; gate, up, down 32 x hidden), 5 iterations each
    spec = load_spec("muon-tiny", ["model.n_layer=1", "model.d_model=32", "model.n_head=2",
                                   "model.seq_len=32"]).spec
    opts = build_optimizers(pt.build_model(spec, "cpu"), "muon", 1e-3, 0.0, ns_dtype="auto")
    shapes = [tuple(p.shape) for p in opts[0].param_groups[0]["params"]]
    assert len(shapes) == 7
    assert r["ns_flops_per_step"] == sum(ns_flops(m, n, 5) for m, n in shapes)
    assert 0 < r["ns_flops_frac"] < 1
    assert r["tokens"] == r["steps"] * r["batch_size"] * r["seq_len"]
    assert r["muon_curve"][0][0] == 0 and r["muon_curve"][-1][0] == r["tokens"]
    assert r["adamw_curve"][-1][1] == r["adamw_val_loss"]
    # both arms start from the same weights and evaluate the same batches
    assert r["muon_curve"][0][1] == r["adamw_curve"][0][1]


def test_optimizers_efficiency() -> None:
    """Tokens and FLOPs to AdamW's best loss; NS FLOPs scale the token ratio by
    1 + NS / training FLOPs per step."""
    curve = [(0, 5.0), (100, 3.0), (200, 2.0)]  # AdamW's best, after 400 tokens: 2.5
    e = efficiency(curve, 2.5, 400, per_step=10, flops_per_token=6, ns_per_step=30)
    assert e["muon_tokens_to_adamw_loss"] == 150
    assert e["muon_tokens_to_adamw_loss_ratio"] == pytest.approx(150 / 400)
    assert e["token_efficiency"] == pytest.approx(400 / 150, abs=1e-3)
    # Muon: 150 tokens x 6 + 15 steps x 30 = 1350 FLOPs; AdamW: 400 x 6 = 2400
    assert e["muon_flops_to_adamw_loss_ratio"] == pytest.approx(1350 / 2400)
    assert e["compute_efficiency"] == pytest.approx(2400 / 1350, abs=1e-3)
    assert e["muon_flops_to_adamw_loss_ratio"] == pytest.approx(
        e["muon_tokens_to_adamw_loss_ratio"] * (1 + 30 / (6 * 10)))
    never = efficiency(curve, 1.0, 400, 10, 6, 30)
    assert set(never.values()) == {None} and set(never) == set(e)


def test_optimizers_lr_ladder() -> None:
    assert best_lr({1e-3: 2.0, 3e-3: 1.5, 1e-2: float("nan")}) == 3e-3
    assert next_lr({1e-3: 2.0, 3e-3: 1.5, 1e-2: 1.7}) is None  # inside: done
    assert next_lr({1e-3: 2.0, 3e-3: 1.8, 1e-2: 1.7}) == 3e-2  # best at the top edge
    assert next_lr({1e-3: 1.6, 3e-3: 1.8, 1e-2: 1.9}) == 3e-4  # at the bottom edge
    assert next_lr({1e-4: 1.0, 3e-4: 2.0}) is None  # the ladder ends there
    with pytest.raises(RuntimeError, match="diverged"):
        best_lr({1e-3: float("inf")})


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


def test_spikes_tiny() -> None:
    """`wb bench spikes` end to end on the first 400 steps of each shipped curve: recall
    per jump and false positives per 1,000 clean steps, for the shipped detector."""
    r = BENCHES["spikes"](quick=True, progress=None, tiny=True)
    assert set(r["curves"]) == {"muon-tiny", "adamw-tiny", "depth-tiny", "rl-tiny",
                                "muon-tiny/4", "adamw-tiny/4", "muon-tiny/8", "adamw-tiny/8"}
    _finite(r, ["recorded_min_recall_ge_10pct", "recorded_fp_per_10k", "quiet8_mean_recall",
                "muon-tiny recall 10%", "depth-tiny fp_per_1k", "muon-tiny noise"])
    for name, c in r["curves"].items():
        assert c["steps"] == 400 and c["positions"] > 0, name
        assert c["fp_per_1k"] == pytest.approx(1000 * c["false_positives"] / 400, abs=1e-3)
        for shape in ("single", "burst3"):
            recall = c["recall"][shape]
            assert list(recall) == r["jumps"] == ["5%", "10%", "15%", "20%", "30%", "50%"]
            assert all(0 <= v <= 1 for v in recall.values()), (name, recall)
        single = list(c["recall"]["single"].values())
        assert single == sorted(single), (name, single)  # a bigger jump fires more often
        # three bad steps in a row are caught at least as often as one
        assert all(c["recall"]["burst3"][j] >= c["recall"]["single"][j] for j in r["jumps"])
    # the quiet views are quieter, and the depth curve runs with its spec's floor
    assert r["muon-tiny/8 noise"] < r["muon-tiny/4 noise"] < r["muon-tiny noise"]
    assert r["config"]["depth-tiny"]["min_rel_jump"] == 1.0
    # issue 17: no relative floor of 0.25 any more, so a 20% jump on a quiet curve fires
    assert r["config"]["muon-tiny"]["min_rel_jump"] < 0.2
    assert r["curves"]["adamw-tiny/8"]["recall"]["single"]["20%"] > 0.5


def test_tui_tiny_prints_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wb bench tui` end to end at its smallest: the dashboard figures, the 50-key grid
    (20 keys here) and the big-store case (20 runs here), printed by `wb bench`'s table."""
    import io

    from rich.console import Console

    from workbench.render import bench_table
    from workbench.screens.tabs.metrics import LIVE_REDRAWS

    monkeypatch.setenv("WB_BENCH_CACHE", str(tmp_path / "cache"))
    r = BENCHES["tui"](quick=True, progress=None, tiny=True)
    figures = ["first_frame_s", "refresh_ms", "open_run_s", "open_run_idle_s", "first_paint_s",
               "open_run_again_s",
               "grid_refresh_ms", "grid_frame_max_ms", "grid_lag_max_s", "big_store_ls_s",
               "big_store_first_frame_s", "big_store_open_run_s"]
    _finite(r, figures)
    assert not any(k.endswith("_error") for k in r), r
    assert r["grid_keys"] == 20 and r["grid_charts"] == 16 and r["grid_lag_undrawn"] == 0
    assert 0 < r["grid_redrawn_per_refresh"] <= LIVE_REDRAWS
    assert "tiny" in r["big_store"] and "targets do not apply" in r["big_store"]
    assert r["big_store_cached"] is False and r["big_store_build_s"] > 0
    assert "big_store_ls_ok" not in r  # the targets are for the sizes only
    assert r["big_store_path"].startswith(str(tmp_path / "cache"))
    out = io.StringIO()
    Console(file=out, width=200).print(bench_table("tui", r))
    for key in figures + ["target_grid_refresh_ms", "target_big_store_ls_s", "big_store"]:
        assert key in out.getvalue(), key


def test_tui_big_store_is_built_once_per_parameter_set(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.bench.tui import BIG_KEYS, big_store
    from workbench.store import Store

    monkeypatch.setenv("WB_BENCH_CACHE", str(tmp_path))
    root, built = big_store(3, 10)
    assert built is not None and root.is_relative_to(tmp_path)
    assert big_store(3, 10) == (root, None)  # cached: not rebuilt
    other, built = big_store(4, 10)
    assert other != root and built is not None
    assert not list(tmp_path.glob("*.building-*"))
    st = Store(root, create=False)
    rows = st.runs()
    assert [r.name for r in rows] == ["sdk-0000", "sdk-0001", "sdk-0002"]
    assert all(r.status == "finished" and r.last_step == 9 for r in rows)
    assert st.scalar_span(rows[-1].id) == 10 * len(BIG_KEYS)
    st.close()
