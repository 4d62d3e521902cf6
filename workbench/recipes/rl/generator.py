"""A generator: one OS process that decodes rollouts continuously and never waits for
the trainer, except where the staleness bound says it must (AReaL).

Loop (between two decode steps, so nothing waits longer than one step):
1. control messages: new weights are announced here, then received by a
   torch.distributed broadcast from the trainer (rank 0) over this generator's own
   {0, rank} group. With `rollout.inflight` they load at once and the KV caches are
   kept (Magistral: sequences in flight carry on with the new weights, and one
   completion spans several versions); otherwise they wait until every sequence in
   flight has finished on the old weights, and nothing new starts meanwhile.
2. admission: a new prompt group (G completions of one problem) may start only when
   `group // groups_per_step <= engine_version + max_staleness`: the group is trained
   at version group // groups_per_step and its oldest token has the engine's version,
   so no sample is staler than max_staleness.
   Group ids come from one counter shared by all generators; the problem of group g
   is a pure function of (seed, g), so a resumed run draws the same problems.
   Groups restarted after a lost generator (the trainer's "redo" messages) pass the
   same bound: they go first, but wait while they would be too stale (`take_group`).
3. one engine step; finished completions go to the trainer's queue.
Idle time (nothing to decode: paused by the bound, or waiting for weights) is
reported with each completion, for `perf/generator_idle_frac`. So is slot occupancy,
for `perf/slot_occupancy`: the fraction of `rollout.slots` decoding, averaged over the
decode steps weighted by each step's duration (idle time is not in it: that is
the idle fraction). A step's sequences are those still active after it plus those it
finished. Time-weighted because a step with few sequences is short: a plain mean per
step would count the many quick steps of a batch's long tail many times over. The
figures travel every STATS_EVERY_S and whenever the generator runs out of work; a
trainer step that received none (a step shorter than that, async) has no
`perf/slot_occupancy`. Under
`max_staleness = 0` at most `groups_per_step` x `group_size` sequences may be in flight
(one batch), so a synchronous run's occupancy is at most that over `slots`, and lower
while the batch's long tail finishes.

Stop: on the shared stop event (or a "stop" message) the loop ends and the process
leaves with os._exit (`leave`): nothing it holds is needed any more, and the
interpreter's teardown of torch and the gloo group took seconds (longer than
`wb stop`'s grace on a busy host), during which the trainer waited to join it.

Tokens: the policy's tokenizer, given as its load_tokenizer string ("bytes" or
"hf:<folder>": a spawned process cannot share the object). A byte policy's prompt is
BOS + the task text; an hf: policy's goes through its chat template with
`policy.system_prompt`. The engine stops on any of the tokenizer's stop ids (EOS and the
template's end-of-turn token), and completions are decoded by the same tokenizer.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from datetime import timedelta
from typing import Any, NoReturn

STATS_EVERY_S = 0.25


def flat_numel(params: list[Any]) -> int:
    return sum(p.numel() for p in params)


def unflatten(flat: Any, named: list[tuple[str, Any]]) -> dict[str, Any]:
    """Views of `flat` shaped like the named parameters (same order on both sides)."""
    out, offset = {}, 0
    for name, p in named:
        out[name] = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def draw_problem(spec: Any, g: int, problems: list[Any] | None, room: int,
                 tokenizer: Any) -> tuple[Any, list[int]]:
    """The problem of group g and its prompt ids: a pure function of (seed, g). Draws from
    the same stream until the prompt fits `room` tokens (a heavy-tailed task can exceed
    the context); bounded, and a clear error if nothing fits."""
    import numpy as np

    from workbench.recipes.rl.tasks import sample_problem

    rng = np.random.default_rng([spec.seed, g])
    for _ in range(1000):
        if problems is not None:
            problem = problems[int(rng.integers(len(problems)))]
        else:
            problem = sample_problem(rng, spec.tasks.names)
        prompt = tokenizer.prompt_ids(problem.prompt, spec.policy.system_prompt or None)
        if len(prompt) <= room:
            return problem, prompt
    raise ValueError(f"no prompt fits policy.seq_len - rollout.l_max = {room} tokens "
                     "after 1000 draws — raise policy.seq_len or lower rollout.l_max")


def _watch_parent(parent_pid: int) -> None:
    """Exit at once when the trainer is gone (kill -9): no orphan keeps generating."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="wb-watch-trainer", daemon=True).start()


def admissible(g: int, per_step: int, engine_version: int, max_staleness: int,
               steps: int) -> bool:
    """Whether group g may start on an engine holding weights `engine_version`: its batch
    (g // per_step) is at most `max_staleness` versions ahead of those weights (its first
    token's version), and the run still trains that batch."""
    batch = g // per_step
    return batch <= engine_version + max_staleness and batch < steps


def take_group(redo: list[int], started: Any, engine_version: int, per_step: int,
               max_staleness: int, steps: int) -> int | None:
    """The next group this generator starts, or None to wait.

    A restarted group (`redo`, oldest first) goes before a new one, under the same
    staleness bound: a redo group too far ahead of this engine's weights waits (and so
    does every new group, all of which are later). `started`: the shared counter of new
    groups (an mp.Value), advanced only when its group is taken."""
    if redo:
        if not admissible(redo[0], per_step, engine_version, max_staleness, steps):
            return None
        return redo.pop(0)
    with started.get_lock():
        g = int(started.value)
        if not admissible(g, per_step, engine_version, max_staleness, steps):
            return None
        started.value = g + 1
    return g


def leave(code: int = 0) -> NoReturn:
    """Exit now, skipping the interpreter's teardown (see the module doc): the streams
    are flushed; the rollout queue's unsent tail and the gloo sockets are dropped (the
    trainer reads neither once it has asked for the stop)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def engine_options(engine: str, tokenizer: Any) -> dict[str, Any]:
    """The engine's stop ids (EOS and end-of-turn), and for vLLM an hf: policy's own
    folder to load as is."""
    if engine == "vllm":
        folder = getattr(tokenizer, "folder", None)  # an HFTokenizer's checkpoint folder
        return {"stop_ids": list(tokenizer.stop_ids),
                **({"model_dir": str(folder)} if folder is not None else {})}
    return {"eos_id": list(tokenizer.stop_ids)}


def generator_main(rank: int, world: int, port: int, spec_toml: str,
                   model_config: dict[str, Any], tokenizer_name: str, shared: dict[str, Any],
                   control: Any, out: Any, parent_pid: int) -> None:
    """Process entry (multiprocessing spawn). `tokenizer_name`: the policy's tokenizer as
    load_tokenizer takes it ("bytes" or "hf:<folder>"). `shared`: version, started
    (mp.Values), stop (mp.Event). `control`: this generator's queue; `out`: the trainer's
    queue."""
    _watch_parent(parent_pid)
    import torch
    import torch.distributed as dist

    from workbench.data.tokenizer import load_tokenizer
    from workbench.engine import Request, make_engine
    from workbench.models.gpt import GPT, GPTConfig
    from workbench.recipes.common.seeding import seed_everything
    from workbench.recipes.rl.spec import RLSpec
    from workbench.recipes.rl.tasks import load_jsonl
    from workbench.spec import parse_spec

    torch.set_num_threads(1)
    spec: RLSpec = parse_spec(spec_toml)  # type: ignore[assignment]
    ro, G, per_step = spec.rollout, spec.grpo.group_size, spec.grpo.groups_per_step
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    groups = [dist.new_group([0, i]) for i in range(1, world)]  # every rank, same order
    mine = groups[rank - 1]

    seed_everything(spec.seed)
    # The trainer's weights arrive next: allocate without a random init. The torch engine
    # decodes on the GPU when there is one.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT.empty(GPTConfig(**model_config), device=device).eval()
    named = list(model.named_parameters())
    flat = torch.empty(flat_numel([p for _, p in named]))
    dist.broadcast(flat, src=0, group=mine)  # the starting weights
    version = int(shared["version"].value)
    with torch.no_grad():
        for (_, p), v in zip(named, unflatten(flat, named).values(), strict=True):
            p.copy_(v)
    tokenizer = load_tokenizer(tokenizer_name)
    engine = make_engine(spec.engine.name, model, max_batch=ro.slots, max_len=model.config.seq_len,
                         temperature=ro.temperature, seed=spec.seed * 1000 + rank, device=device,
                         **engine_options(spec.engine.name, tokenizer))
    engine.version = version
    t = spec.tasks
    problems = load_jsonl(t.path, t.verifier, t.prompt_field, t.answer_field,
                          answer_format=t.answer_format) if t.path else None

    room = model.config.seq_len - ro.l_max  # prompt tokens that leave l_max for the answer
    pending: tuple[dict[str, Any], int] | None = None
    redo: list[int] = []
    idle_s = busy_s = 0.0
    tokens = 0
    slot_s = decode_s = 0.0  # sum of (sequences decoded x step seconds); decode seconds
    next_id = 0
    last_stats = time.monotonic()
    print(f"generator {rank}: pid {os.getpid()}, {ro.slots} slots, version {version}",
          flush=True)
    while not shared["stop"].is_set():
        t0 = time.perf_counter()
        # 1. weights
        while True:
            try:
                msg = control.get_nowait()
            except queue.Empty:
                break
            if msg[0] == "stop":
                shared["stop"].set()
                break
            if msg[0] == "weights":
                dist.broadcast(flat, src=0, group=mine)
                state = {k: v.clone() for k, v in unflatten(flat, named).items()}
                pending = (state, int(msg[1]))
            if msg[0] == "redo":  # a lost generator's group, started again here
                redo.append(int(msg[1]))
        if pending is not None and (ro.inflight or engine.num_active() == 0):
            engine.load_weights(*pending)
            pending = None
        # 2. admission (nothing new starts while old weights wait to be replaced)
        # Keep one group queued behind full slots: a slot freed by a short answer is
        # refilled at once instead of idling until the group's longest answer ends.
        while pending is None and engine.num_waiting() < G and \
                engine.num_active() + engine.num_waiting() < ro.slots + G:
            # Against the weights this engine holds (not the trainer's counter, which
            # moves before the new weights arrive): the first token's version.
            g = take_group(redo, shared["started"], engine.version, per_step,
                           ro.max_staleness, spec.grpo.steps)
            if g is None:
                break
            problem, prompt = draw_problem(spec, g, problems, room, tokenizer)
            out.put(("start", rank, g))
            for i in range(G):
                engine.add(Request(id=next_id, prompt=prompt, max_new_tokens=ro.l_max,
                                   meta={"group": g, "index": i, "problem": problem}))
                next_id += 1
        # 3. decode
        if engine.has_work():
            t_step = time.perf_counter()
            done = engine.step(admit=pending is None)  # old weights: drain, admit nothing
            decoded = engine.num_active() + len(done)
            if decoded:
                dt = time.perf_counter() - t_step
                slot_s += decoded * dt
                decode_s += dt
            for c in done:
                tokens += len(c.tokens)
                out.put(("rollout", rank, c.meta["group"], c.meta["index"], c.meta["problem"],
                         c.prompt, c.tokens, c.logprobs, c.versions, c.finish,
                         tokenizer.decode(c.tokens)))
            busy_s += time.perf_counter() - t0
        else:
            time.sleep(0.005)
            idle_s += time.perf_counter() - t0
        # Also as soon as the work runs out (a synchronous batch's end): that batch's
        # figures then reach the trainer ahead of the next batch's completions.
        if time.monotonic() - last_stats > STATS_EVERY_S or (
                decode_s and not engine.has_work()):
            out.put(("stats", rank, busy_s, idle_s, tokens, slot_s, decode_s))
            busy_s = idle_s = slot_s = decode_s = 0.0
            tokens = 0
            last_stats = time.monotonic()
    leave(0)
