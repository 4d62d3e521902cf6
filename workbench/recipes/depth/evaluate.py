"""What depth buys, measured on a trained recurrent-depth model (Geiping et al. 2025).

- Accuracy per fixed recurrence count r: one teacher-forced parallel forward per batch
  of evaluation sequences (the same computation as decoding with the full cache); an
  answer is right when the argmax at its '=' is the answer digit.
- The evaluation sequences hold held-out problems only (task.py: a hash split, so no
  evaluated problem was trained on, at any chain length). For comparison, the accuracy
  at the largest r on as many sequences of training-split problems (`seen_acc`): the
  difference is what memorizing the training problems adds.
- Adaptive exit: each sequence decoded token by token with the shared KV cache, every
  token exiting by the rule (capped at the largest r), as if the model generated it:
  the steps per token are the core iterations it spent. Each answer is scored at its
  '='. Compared with the same sequences at the largest fixed r twice:
  - on the shared cache, decoded the same way with every token at the cap: the gap to
    it is the exit rule's alone;
  - with the full cache (the table's computation), which also gives the unshared KV
    size: the gap to it adds what sharing the cache changes. With the shared cache a
    token reads earlier tokens' last-iteration KV, so work done on earlier tokens
    carries forward: few steps per token can do what a parallel pass needs many
    iterations for.
  The shared cache's size is measured after decoding.
- Compute: `steps_ratio` counts core iterations only; `compute_ratio` is the FLOPs of
  adaptive decoding over fixed-r decoding of the same tokens, counting the prelude
  once, the core per iteration and the coda + LM head per readout (the kl rule reads
  out after every iteration), attention over each token's context
  (`RecurrentDepthGPT.decode_flops` defines the model).
- Decode speed per r: greedy generation after a short prompt, shared cache (best of 3).
- Self-speculative decoding: draft with `draft_steps`, verify with `verify_steps`,
  against plain greedy decoding at `verify_steps` (full cache, whose output the
  speculative one equals; checked and reported).
- A sample: the first adaptive sequence, each token with the recurrences behind it.
  The model is trained on answers only, so its free continuation is not a valid
  problem; the sample shows the problem text it read and its own answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from workbench.data.corpus import decode
from workbench.engine.depth import DepthDecoder, generate, generate_speculative
from workbench.models.recurrent_depth import RecurrentDepthGPT
from workbench.recipes.depth.task import EVAL_SPLIT, ChainTask, Sequence

BATCH = 32


@dataclass
class DepthEval:
    accuracy_by_r: dict[int, float]
    tokens_per_s_by_r: dict[int, float]
    fixed_steps_mean: float  # the fixed maximum r compared with adaptive exit
    adaptive_steps_mean: float
    steps_ratio: float  # adaptive / fixed core iterations
    compute_ratio: float  # adaptive / fixed decoding FLOPs, readouts included
    readouts_mean: float  # coda + LM-head passes per token, adaptive exit
    fixed_acc: float  # at the maximum r, full cache (parallel forward)
    seen_acc: float  # at the maximum r on problems of the training split
    fixed_shared_acc: float  # at the maximum r, shared cache, decoded like adaptive exit
    adaptive_acc: float
    adaptive_steps: list[int]  # per decoded token
    answer_steps_mean: float  # mean over the tokens whose forward gives an answer
    answers: int
    kv_bytes_shared: int
    kv_bytes_unshared: int
    spec_tok_s: float
    plain_tok_s: float
    spec_accept_rate: float
    spec_equal: bool  # speculative output == plain output at verify_steps
    adaptive_tok_s: float  # decoding with adaptive exit (shared cache)
    fixed_shared_tok_s: float  # decoding the same tokens at the maximum r (shared cache)
    eval_split: str = EVAL_SPLIT  # what the evaluation sequences hold
    sample_tokens: list[str] = field(default_factory=list)  # generated, one per token
    sample_depths: list[int] = field(default_factory=list)  # recurrences behind each

    def summary(self) -> dict[str, Any]:
        """Everything but the per-answer list and the sample (JSON-able)."""
        out = asdict(self)
        for key in ("adaptive_steps", "sample_tokens", "sample_depths"):
            out.pop(key)
        out["accuracy_by_r"] = {str(k): v for k, v in self.accuracy_by_r.items()}
        out["tokens_per_s_by_r"] = {str(k): v for k, v in self.tokens_per_s_by_r.items()}
        return out


def _answer_hits(logits: torch.Tensor, seqs: list[Sequence]) -> list[bool]:
    return [int(logits[b, p].argmax()) == s.ids[p + 1]
            for b, s in enumerate(seqs) for p in s.answers]


@torch.no_grad()
def accuracy_at(model: RecurrentDepthGPT, task: ChainTask, seqs: list[Sequence], steps: int,
                seed: int) -> float:
    """Answer accuracy at a fixed recurrence count (parallel forward)."""
    hits: list[bool] = []
    for i in range(0, len(seqs), BATCH):
        chunk = seqs[i:i + BATCH]
        x, _ = task.batch(chunk)
        g = torch.Generator().manual_seed(seed + i)
        logits = model(x.to(model.cos.device), steps=steps, generator=g).logits
        hits += _answer_hits(logits, chunk)
    return sum(hits) / max(1, len(hits))


@dataclass
class Decoded:
    """One sequence decoded token by token on the shared cache, by an exit rule."""

    steps: list[int]  # recurrences of the forward at each position
    readouts: list[int]  # coda + LM-head passes of the forward at each position
    predictions: dict[int, int]  # answer position -> the model's argmax there
    kv_bytes: int

    def flops(self, model: RecurrentDepthGPT) -> int:
        """Forward FLOPs of the whole decode (position p attends over p + 1 positions)."""
        return sum(model.decode_flops(p + 1, n, r)
                   for p, (n, r) in enumerate(zip(self.steps, self.readouts, strict=True)))


@torch.no_grad()
def decode_adaptive(model: RecurrentDepthGPT, seq: Sequence, max_steps: int, rule: str,
                    threshold: float | None, seed: int) -> Decoded:
    """One sequence through the shared-cache decoder, every token exiting by `rule`
    ("none": every token at max_steps, the fixed baseline on the same cache)."""
    last = seq.answers[-1]
    dec = DepthDecoder(model, last + 1, "shared", max_steps, seed)
    answers = set(seq.answers)
    steps, readouts, predictions = [], [], {}
    for pos in range(last + 1):
        before = dec.readouts
        logits, n = dec.step(seq.ids[pos], rule, threshold)
        steps.append(n)
        readouts.append(dec.readouts - before)
        if pos in answers:
            predictions[pos] = int(logits.argmax())
    return Decoded(steps, readouts, predictions, dec.kv_bytes)


def _hits(seq: Sequence, d: Decoded) -> list[bool]:
    return [d.predictions[p] == seq.ids[p + 1] for p in seq.answers]


def depth_sample(seq: Sequence, d: Decoded) -> tuple[list[str], list[int]]:
    """The sequence as the model read it, each token with the recurrences behind the
    distribution it came from (its previous position's forward); at each answer the
    model's own digit."""
    tokens, depths = [], []
    for pos, n in enumerate(d.steps):
        tokens.append(token_text(d.predictions.get(pos, seq.ids[pos + 1])))
        depths.append(n)
    return tokens, depths


@torch.no_grad()
def decode_full(model: RecurrentDepthGPT, seq: Sequence, steps: int, seed: int,
                ) -> tuple[list[bool], int]:
    """The same sequence at a fixed count with the full cache: (hits, cache bytes)."""
    dec = DepthDecoder(model, seq.answers[-1] + 1, "full", steps, seed)
    logits = dec.feed(seq.ids[:seq.answers[-1] + 1], steps)
    hits = [int(logits[p].argmax()) == seq.ids[p + 1] for p in seq.answers]
    return hits, dec.kv_bytes


def prompt_of(seq: Sequence, room: int) -> list[int]:
    """BOS and the whole problems that fit in `room` tokens (at least the first '=')."""
    ends = [p + 2 for p in seq.answers if p + 3 <= room]  # through the ';'
    return seq.ids[:ends[-1]] if ends else seq.ids[:seq.answers[0] + 1]


def _timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """fn's result and its best wall time over `repeats` calls (speed figures use 3:
    one short generation's time on a shared CPU is noisy)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def token_text(tok: int) -> str:
    return decode([tok]) if tok < 256 else ""


@dataclass
class Adaptive:
    hits: list[bool] = field(default_factory=list)  # per answer, adaptive exit
    fixed_hits: list[bool] = field(default_factory=list)  # per answer, fixed max r, full cache
    shared_hits: list[bool] = field(default_factory=list)  # fixed max r, shared cache
    steps: list[int] = field(default_factory=list)  # per decoded token
    readouts: list[int] = field(default_factory=list)  # per decoded token
    answer_steps: list[int] = field(default_factory=list)
    flops: int = 0  # adaptive decoding
    fixed_flops: int = 0  # the same tokens at the fixed max r
    kv_shared: int = 0
    kv_full: int = 0
    seconds: float = 0.0  # decoding with adaptive exit
    fixed_seconds: float = 0.0  # decoding at the fixed max r, shared cache
    sample: tuple[list[str], list[int]] = ([], [])

    def add_adaptive(self, model: RecurrentDepthGPT, seq: Sequence, d: Decoded,
                     seconds: float) -> None:
        """One sequence decoded with the exit rule: its answers, steps and compute."""
        self.hits += _hits(seq, d)
        self.steps += d.steps
        self.readouts += d.readouts
        self.answer_steps += [d.steps[p] for p in seq.answers]
        self.flops += d.flops(model)
        self.kv_shared = max(self.kv_shared, d.kv_bytes)
        self.seconds += seconds

    def add_fixed_shared(self, model: RecurrentDepthGPT, seq: Sequence, d: Decoded,
                         seconds: float) -> None:
        """The same sequence at the fixed maximum on the shared cache: the baseline that
        differs from adaptive decoding by the exit rule only."""
        self.shared_hits += _hits(seq, d)
        self.fixed_flops += d.flops(model)
        self.fixed_seconds += seconds


def adaptive_exit(model: RecurrentDepthGPT, seqs: list[Sequence], ev: Any, seed: int,
                  say: Callable[[str], None], stop: Callable[[], bool]) -> Adaptive | None:
    """Adaptive exit against the fixed maximum on the same sequences, with the shared
    and with the full cache (module docstring)."""
    a, top = Adaptive(), ev.max_steps
    for i, seq in enumerate(seqs):
        d, dt = _timed(lambda seq=seq, i=i: decode_adaptive(model, seq, top, ev.exit,
                                                             ev.threshold, seed + i))
        a.add_adaptive(model, seq, d, dt)
        if i == 0:
            a.sample = depth_sample(seq, d)
        d, dt = _timed(lambda seq=seq, i=i: decode_adaptive(model, seq, top, "none", None,
                                                             seed + i))
        a.add_fixed_shared(model, seq, d, dt)
        fixed, kv_full = decode_full(model, seq, top, seed + i)
        a.fixed_hits += fixed
        a.kv_full = max(a.kv_full, kv_full)
        if (i + 1) % max(1, len(seqs) // 4) == 0:
            say(f"depth eval: adaptive exit ({ev.exit}) {i + 1}/{len(seqs)} sequences")
        if stop():
            return None
    return a


def _mean(xs: list[Any]) -> float:
    return sum(xs) / max(1, len(xs))


def evaluate(model: RecurrentDepthGPT, task: ChainTask, ev: Any, seed: int,
             say: Callable[[str], None] = print,
             stop: Callable[[], bool] = lambda: False) -> DepthEval | None:
    """All of the module docstring; `ev` is the spec's EvalSection. None when `stop()`
    turned true between two measurements."""
    model.eval()
    seqs = task.eval_set(seed, ev.sequences)
    accuracy: dict[int, float] = {}
    for r in ev.recurrences:
        accuracy[r] = accuracy_at(model, task, seqs, r, seed)
        say(f"depth eval: r={r:<3d} accuracy {accuracy[r]:.3f}")
        if stop():
            return None

    top = ev.max_steps
    seen = accuracy_at(model, task, task.seen_set(seed, ev.sequences), top, seed)
    say(f"depth eval: r={top} accuracy {seen:.3f} on training-split problems, "
        f"{accuracy[top]:.3f} held out")
    a = adaptive_exit(model, seqs[:ev.adaptive_sequences], ev, seed, say, stop)
    if a is None:
        return None
    say(f"depth eval: adaptive {_mean(a.hits):.3f} at {_mean(a.steps):.2f} mean steps per "
        f"token ({_mean(a.answer_steps):.2f} on answers, compute ratio "
        f"{a.flops / a.fixed_flops:.3f}) vs fixed r={top} {_mean(a.shared_hits):.3f} "
        f"shared cache, {_mean(a.fixed_hits):.3f} full cache ({len(a.hits)} answers, "
        f"{len(a.steps)} tokens)")

    prompt = prompt_of(seqs[0], model.config.seq_len - ev.decode_tokens - ev.lookahead)
    n_new = ev.decode_tokens
    speed: dict[int, float] = {}
    for r in ev.recurrences:
        gen, dt = _timed(lambda r=r: generate(model, prompt, n_new, steps=r, seed=seed), 3)
        speed[r] = len(gen.tokens) / dt
    say("depth eval: decode tokens/s " + ", ".join(f"r={r} {v:.0f}" for r, v in speed.items()))

    plain, plain_s = _timed(lambda: generate(model, prompt, n_new, steps=ev.verify_steps,
                                             cache="full", seed=seed), 3)
    spec, spec_s = _timed(lambda: generate_speculative(
        model, prompt, n_new, draft_steps=ev.draft_steps, verify_steps=ev.verify_steps,
        lookahead=ev.lookahead, seed=seed), 3)
    say(f"depth eval: speculative (draft {ev.draft_steps}, verify {ev.verify_steps}) "
        f"{len(spec.tokens) / spec_s:.0f} tok/s vs plain {len(plain.tokens) / plain_s:.0f}, "
        f"acceptance {spec.acceptance:.2f}")

    return DepthEval(
        accuracy_by_r=accuracy, tokens_per_s_by_r=speed, fixed_steps_mean=float(top),
        adaptive_steps_mean=_mean(a.steps), steps_ratio=_mean(a.steps) / top,
        compute_ratio=a.flops / a.fixed_flops, readouts_mean=_mean(a.readouts),
        fixed_acc=_mean(a.fixed_hits), seen_acc=seen, fixed_shared_acc=_mean(a.shared_hits),
        adaptive_acc=_mean(a.hits), adaptive_steps=a.steps,
        answer_steps_mean=_mean(a.answer_steps), answers=len(a.hits),
        kv_bytes_shared=a.kv_shared, kv_bytes_unshared=a.kv_full,
        spec_tok_s=len(spec.tokens) / spec_s, plain_tok_s=len(plain.tokens) / plain_s,
        spec_accept_rate=spec.acceptance, spec_equal=spec.tokens == plain.tokens,
        adaptive_tok_s=len(a.steps) / a.seconds,
        fixed_shared_tok_s=len(a.steps) / a.fixed_seconds, sample_tokens=a.sample[0],
        sample_depths=a.sample[1])
