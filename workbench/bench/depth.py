"""`wb bench depth`: what depth buys at inference, on a freshly trained `depth-tiny`.

One real run of the `depth-tiny` spec in a temporary store (training, then its
evaluation; recipes/depth), and its figures:
- eval_split: what the accuracies are measured on, held-out problems (a hash split of
  the problem texts: training never sees them, at any chain length); seen_acc: the
  largest fixed count's accuracy on training-split problems instead, to compare with
  accuracy_by_r at that count;
- adaptive_acc / adaptive_steps_mean: the evaluation's answers with per-token adaptive
  exit (shared cache); fixed_shared_acc: the same answers decoded the same way at the
  largest fixed recurrence count (fixed_steps_mean); fixed_acc: at that count with the
  full cache (the parallel forward). acc_gap_shared = fixed_shared_acc - adaptive_acc
  is the exit rule's cost alone; acc_gap_full = fixed_acc - adaptive_acc adds what
  sharing the cache changes;
- steps_ratio = adaptive / fixed core iterations; compute_ratio = adaptive / fixed
  decoding FLOPs, which also counts the prelude, the coda + LM head at every readout
  (readouts_mean per token: the kl rule reads out after each iteration) and attention
  over the context (`RecurrentDepthGPT.decode_flops`); decode_tok_s /
  fixed_decode_tok_s: the two decodings' measured speed (decode_speedup);
- kv_bytes_shared / kv_bytes_unshared: the decoder's cache with KV sharing, and the
  full cache at the largest count;
- spec_tok_s / plain_tok_s: self-speculative vs plain greedy decoding at the verify
  depth (same output), spec_accept_rate;
- accuracy_by_r and tokens_per_s_by_r: the table (in --json).
Quick mode trains 360 steps instead of 800, evaluates fewer sequences and times
shorter generations (about 4 minutes on 2 busy cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from workbench.bench.runs import run_to_end, say

SPEC = "depth-tiny"
QUICK = ["train.steps=360", "train.checkpoint_every=0", "eval.sequences=48",
         "eval.adaptive_sequences=12", "eval.decode_tokens=24"]


def bench_depth(quick: bool = False, progress: Console | None = None,
                overrides: list[str] | None = None) -> dict[str, Any]:
    """`overrides` (--set style) shrink the run further (tests)."""
    from workbench.store import Store

    extra = [*(QUICK if quick else []), *(overrides or [])]
    with tempfile.TemporaryDirectory(prefix="wb-bench-depth-") as tmp:
        store = Store(Path(tmp) / "store")
        say(progress, f"depth bench: train and evaluate {SPEC}"
                      + (f" ({' '.join(extra)})" if extra else ""))
        t0 = time.monotonic()
        row = run_to_end(store, SPEC, extra, progress, "depth", timeout=1800)
        seconds = time.monotonic() - t0
        events = store.events(row.id, kind="depth_eval")
        store.close()
    if not events:
        raise RuntimeError("the depth run finished without a depth_eval event")
    e = events[-1].payload
    return {
        "eval_split": e["eval_split"], "seen_acc": e["seen_acc"],
        "fixed_steps_mean": e["fixed_steps_mean"], "adaptive_steps_mean": e["adaptive_steps_mean"],
        "steps_ratio": e["steps_ratio"], "compute_ratio": e["compute_ratio"],
        "readouts_mean": e["readouts_mean"], "fixed_acc": e["fixed_acc"],
        "fixed_shared_acc": e["fixed_shared_acc"], "adaptive_acc": e["adaptive_acc"],
        "acc_gap_shared": e["fixed_shared_acc"] - e["adaptive_acc"],
        "acc_gap_full": e["fixed_acc"] - e["adaptive_acc"],
        "decode_tok_s": e["adaptive_tok_s"], "fixed_decode_tok_s": e["fixed_shared_tok_s"],
        "decode_speedup": e["adaptive_tok_s"] / e["fixed_shared_tok_s"],
        "answers": e["answers"], "kv_bytes_shared": e["kv_bytes_shared"],
        "kv_bytes_unshared": e["kv_bytes_unshared"],
        "kv_ratio": e["kv_bytes_unshared"] / e["kv_bytes_shared"],
        "spec_tok_s": e["spec_tok_s"], "plain_tok_s": e["plain_tok_s"],
        "spec_speedup": e["spec_tok_s"] / e["plain_tok_s"],
        "spec_accept_rate": e["spec_accept_rate"], "spec_equal": e["spec_equal"],
        "accuracy_by_r": e["accuracy_by_r"], "tokens_per_s_by_r": e["tokens_per_s_by_r"],
        "run_seconds": seconds, "quick": quick,
    }
