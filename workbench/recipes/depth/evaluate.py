"""What depth buys, measured on a trained recurrent-depth model (RESEARCH.md §3).

- Accuracy per fixed recurrence count r: one teacher-forced parallel forward per batch
  of evaluation sequences (the same computation as decoding with the full cache); an
  answer is right when the argmax at its '=' is the answer digit.
- Adaptive exit: each sequence decoded token by token with the shared KV cache, every
  token exiting by the rule (capped at the largest r), as if the model generated it:
  the steps per token are the compute it spent. Each answer is scored at its '='.
  Compared with the same sequences at the largest fixed r with the full cache (the
  table's computation), which also gives the unshared KV size; the shared cache's
  size is measured after decoding. With the shared cache a token reads earlier
  tokens' last-iteration KV, so work done on earlier tokens carries forward: few
  steps per token can do what a parallel pass needs many iterations for.
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
from workbench.recipes.depth.task import ChainTask, Sequence

BATCH = 32


@dataclass
class DepthEval:
    accuracy_by_r: dict[int, float]
    tokens_per_s_by_r: dict[int, float]
    fixed_steps_mean: float  # the fixed maximum r compared with adaptive exit
    adaptive_steps_mean: float
    steps_ratio: float  # adaptive / fixed
    fixed_acc: float
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
    adaptive_tok_s: float
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
    """One sequence decoded token by token with adaptive exit."""

    steps: list[int]  # recurrences of the forward at each position
    predictions: dict[int, int]  # answer position -> the model's argmax there
    kv_bytes: int


@torch.no_grad()
def decode_adaptive(model: RecurrentDepthGPT, seq: Sequence, max_steps: int, rule: str,
                    threshold: float | None, seed: int) -> Decoded:
    """One sequence through the shared-cache decoder, every token exiting by `rule`."""
    last = seq.answers[-1]
    dec = DepthDecoder(model, last + 1, "shared", max_steps, seed)
    answers = set(seq.answers)
    steps, predictions = [], {}
    for pos in range(last + 1):
        logits, n = dec.step(seq.ids[pos], rule, threshold)
        steps.append(n)
        if pos in answers:
            predictions[pos] = int(logits.argmax())
    return Decoded(steps, predictions, dec.kv_bytes)


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
    fixed_hits: list[bool] = field(default_factory=list)  # per answer, fixed max r
    steps: list[int] = field(default_factory=list)  # per decoded token
    answer_steps: list[int] = field(default_factory=list)
    kv_shared: int = 0
    kv_full: int = 0
    seconds: float = 0.0  # decoding with adaptive exit
    sample: tuple[list[str], list[int]] = ([], [])


def adaptive_exit(model: RecurrentDepthGPT, seqs: list[Sequence], ev: Any, seed: int,
                  say: Callable[[str], None], stop: Callable[[], bool]) -> Adaptive | None:
    """Adaptive exit against the fixed maximum on the same sequences (module docstring)."""
    a, top = Adaptive(), ev.max_steps
    for i, seq in enumerate(seqs):
        d, dt = _timed(lambda seq=seq, i=i: decode_adaptive(model, seq, top, ev.exit,
                                                             ev.threshold, seed + i))
        a.seconds += dt
        a.hits += [d.predictions[p] == seq.ids[p + 1] for p in seq.answers]
        a.steps += d.steps
        a.answer_steps += [d.steps[p] for p in seq.answers]
        a.kv_shared = max(a.kv_shared, d.kv_bytes)
        if i == 0:
            a.sample = depth_sample(seq, d)
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
    a = adaptive_exit(model, seqs[:ev.adaptive_sequences], ev, seed, say, stop)
    if a is None:
        return None
    say(f"depth eval: adaptive {_mean(a.hits):.3f} at {_mean(a.steps):.2f} mean steps per "
        f"token ({_mean(a.answer_steps):.2f} on answers) vs fixed r={top} "
        f"{_mean(a.fixed_hits):.3f} ({len(a.hits)} answers, {len(a.steps)} tokens)")

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
        fixed_acc=_mean(a.fixed_hits), adaptive_acc=_mean(a.hits), adaptive_steps=a.steps,
        answer_steps_mean=_mean(a.answer_steps), answers=len(a.hits),
        kv_bytes_shared=a.kv_shared, kv_bytes_unshared=a.kv_full,
        spec_tok_s=len(spec.tokens) / spec_s, plain_tok_s=len(plain.tokens) / plain_s,
        spec_accept_rate=spec.acceptance, spec_equal=spec.tokens == plain.tokens,
        adaptive_tok_s=len(a.steps) / a.seconds, sample_tokens=a.sample[0],
        sample_depths=a.sample[1])
