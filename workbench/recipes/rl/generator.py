"""A generator: one OS process that decodes rollouts continuously and never waits for
the trainer, except where the staleness bound says it must (AReaL).

Loop (between two decode steps, so nothing waits longer than one step):
1. control messages, from the trainer's hub over ZeroMQ (transport.py `Link`, the
   same for a local generator and one on another host): new weights are announced
   here, then received by a torch.distributed broadcast from the trainer (rank 0)
   over this generator's own {0, rank} group. With `rollout.inflight` they load at
   once and the KV caches are kept (Magistral: sequences in flight carry on with the
   new weights, and one completion spans several versions); otherwise they wait
   until every sequence in flight has finished on the old weights, and nothing new
   starts meanwhile.
2. admission: a new prompt group (G completions of one problem) may start only when
   `group // groups_per_step <= engine_version + max_staleness`: the group is trained
   at version group // groups_per_step and its oldest token has the engine's version,
   so no sample is staler than max_staleness.
   Group ids are granted by the trainer (one counter for all generators, the
   `want` / `groups` messages), the rule checked there against the version this
   generator holds; the problem of group g is a pure function of (seed, g), so a
   resumed run draws the same problems. Groups restarted after a lost generator pass
   the same bound: they go first, but wait while they would be too stale
   (transport.take_group).
3. one engine step; finished completions go to the trainer, kept until acknowledged.
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

Stop: on a "stop" message (or the trainer silent for the transport's timeout) the
loop ends and the process leaves with os._exit (`leave`): nothing it holds is needed
any more, and the interpreter's teardown of torch and the gloo group took seconds (longer than
`wb stop`'s grace on a busy host), during which the trainer waited to join it.

Tokens: the policy's tokenizer, given as its load_tokenizer string ("bytes" or
"hf:<folder>": a spawned process cannot share the object). A byte policy's prompt is
BOS + the task text; an hf: policy's goes through its chat template with
`policy.system_prompt`. The engine stops on any of the tokenizer's stop ids (EOS and the
template's end-of-turn token), and completions are decoded by the same tokenizer.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from datetime import timedelta
from typing import Any, NoReturn

STATS_EVERY_S = 0.25
ASK_AGAIN_S = 0.1  # a refused ask for a group is repeated after this, weights unchanged
DIST_TIMEOUT_S = 120  # torch.distributed's: the join and every weights broadcast


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


def generator_main(rank: int, world: int, address: str, dist_address: str, spec_toml: str,
                   model_config: dict[str, Any], tokenizer_name: str, secret: str,
                   version: int, parent_pid: int | None = None) -> None:
    """Process entry: a multiprocessing child of the trainer (local), or
    `python -m workbench.recipes.rl.remote` started over ssh (another host). Both run
    this. `address`: the trainer's ZeroMQ endpoint (transport.py); `dist_address`:
    host:port of its torch.distributed rendezvous; `secret`: the run's, proven in the
    handshake; `version`: the trainer's weights version at start; `tokenizer_name`: the
    policy's tokenizer as load_tokenizer takes it ("bytes" or "hf:<folder>");
    `parent_pid`: the trainer's pid when it is this process's parent."""
    if parent_pid is not None:
        _watch_parent(parent_pid)
    import torch
    import torch.distributed as dist

    from workbench.data.tokenizer import load_tokenizer
    from workbench.engine import Request, make_engine
    from workbench.models.gpt import GPT, GPTConfig
    from workbench.recipes.common.seeding import seed_everything
    from workbench.recipes.rl.spec import RLSpec
    from workbench.recipes.rl.tasks import load_jsonl
    from workbench.recipes.rl.transport import Link, LinkError
    from workbench.spec import parse_spec

    torch.set_num_threads(1)
    spec: RLSpec = parse_spec(spec_toml)  # type: ignore[assignment]
    try:  # first: the trainer waits for every generator's handshake before the rendezvous
        link = Link(address, secret, rank)
    except LinkError as exc:
        print(f"generator {rank}: {exc}", flush=True)
        leave(1)
    ro, G = spec.rollout, spec.grpo.group_size
    if dist_address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    host, _, port = dist_address.rpartition(":")
    store = dist.TCPStore(host.strip("[]"), int(port), world_size=world, is_master=False,
                          timeout=timedelta(seconds=DIST_TIMEOUT_S))  # as the trainer's
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=DIST_TIMEOUT_S))
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
    granted: list[int] = []  # groups the trainer gave this generator, not started yet
    refused_at: tuple[int, float] | None = None  # (engine version, when) of a "none now"
    idle_s = busy_s = 0.0
    tokens = 0
    slot_s = decode_s = 0.0  # sum of (sequences decoded x step seconds); decode seconds
    next_id = 0
    last_stats = time.monotonic()
    print(f"generator {rank}: pid {os.getpid()} on {socket.gethostname()}, {ro.slots} slots, "
          f"version {version}", flush=True)
    stop = False
    while not stop:
        t0 = time.perf_counter()
        # 1. control: weights, granted groups, stop
        try:
            messages = link.poll(0 if engine.has_work() else 5)
        except LinkError as exc:
            print(f"generator {rank}: {exc}; leaving", flush=True)
            leave(1)
        for kind, body in messages:
            if kind == "stop":
                stop = True
                break
            if kind == "weights":
                dist.broadcast(flat, src=0, group=mine)
                state = {k: v.clone() for k, v in unflatten(flat, named).items()}
                pending = (state, int(body))
            elif kind == "groups":  # [] = none admissible now
                granted += body
                refused_at = None if body else (engine.version, time.monotonic())
        if stop:
            break
        if pending is not None and (ro.inflight or engine.num_active() == 0):
            engine.load_weights(*pending)
            pending = None
        # 2. admission (nothing new starts while old weights wait to be replaced)
        # Keep one group queued behind full slots: a slot freed by a short answer is
        # refilled at once instead of idling until the group's longest answer ends.
        # Groups come from the trainer (transport.Groups, the staleness rule against the
        # weights this engine holds); a refusal is asked again once these weights change
        # or after a moment (a restarted group may have become available).
        while pending is None and engine.num_waiting() < G and \
                engine.num_active() + engine.num_waiting() < ro.slots + G:
            if not granted:
                if refused_at is None or refused_at[0] != engine.version or \
                        time.monotonic() - refused_at[1] > ASK_AGAIN_S:
                    link.ask(1, engine.version)
                break
            g = granted.pop(0)
            problem, prompt = draw_problem(spec, g, problems, room, tokenizer)
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
                link.rollout(c.meta["group"], c.meta["index"],
                             (c.meta["problem"], c.prompt, c.tokens, c.logprobs, c.versions,
                              c.finish, tokenizer.decode(c.tokens)))
            busy_s += time.perf_counter() - t0
        else:
            idle_s += time.perf_counter() - t0
        # Also as soon as the work runs out (a synchronous batch's end): that batch's
        # figures then reach the trainer ahead of the next batch's completions.
        if time.monotonic() - last_stats > STATS_EVERY_S or (
                decode_s and not engine.has_work()):
            link.send("stats", (busy_s, idle_s, tokens, slot_s, decode_s))
            busy_s = idle_s = slot_s = decode_s = 0.0
            tokens = 0
            last_stats = time.monotonic()
    leave(0)
