"""A generator: one OS process that decodes rollouts continuously and never waits for
the trainer, except where the staleness bound says it must (AReaL).

Steps (`generator_main`): connect to the trainer's hub (`connect`), join the weights
group (`join_weights_group`), load the engine with the first weights (`load_engine`),
then run the `Loop` until told to stop. The messages are messages.py's dataclasses.

Loop (between two decode steps, so nothing waits longer than one step):
1. control messages (`Loop.control`), from the trainer's hub over ZeroMQ (transport.py `Link`, the
   same for a local generator and one on another host): new weights are announced
   here (`WeightsReady`), then received by a torch.distributed broadcast from the trainer (rank 0)
   over this generator's own {0, rank} group. With `rollout.inflight` they load at
   once and the KV caches are kept (Magistral: sequences in flight carry on with the
   new weights, and one completion spans several versions); otherwise they wait
   until every sequence in flight has finished on the old weights, and nothing new
   starts meanwhile.
2. admission (`Loop.admit`): a new prompt group (G completions of one problem) may start only when
   `group // groups_per_step <= engine_version + max_staleness`: the group is trained
   at version group // groups_per_step and its oldest token has the engine's version,
   so no sample is staler than max_staleness.
   Group ids are granted by the trainer (one counter for all generators, the
   `Want` / `Granted` messages), the rule checked there against the version this
   generator holds; the problem of group g is a pure function of (seed, g), so a
   resumed run draws the same problems. Groups restarted after a lost generator pass
   the same bound: they go first, but wait while they would be too stale
   (transport.take_group).
3. one engine step (`Loop.decode`); finished completions go to the trainer as
   `Rollout`s, kept until acknowledged.
Idle time (nothing to decode: paused by the bound, or waiting for weights) is
reported in `Stats` messages (`Loop.report`), for `perf/generator_idle_frac`. So is
slot occupancy, for `perf/slot_occupancy`: the fraction of `rollout.slots` decoding,
averaged over the decode steps weighted by each step's duration (idle time is not in it: that is
the idle fraction). A step's sequences are those still active after it plus those it
finished. Time-weighted because a step with few sequences is short: a plain mean per
step would count the many quick steps of a batch's long tail many times over. The
figures travel every STATS_EVERY_S and whenever the generator runs out of work; a
trainer step that received none (a step shorter than that, async) has no
`perf/slot_occupancy`. Under
`max_staleness = 0` at most `groups_per_step` x `group_size` sequences may be in flight
(one batch), so a synchronous run's occupancy is at most that over `slots`, and lower
while the batch's long tail finishes.

Stop: on a `Stop` message (or the trainer silent for `rollout.trainer_timeout_s`) the
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
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from workbench.recipes.rl.messages import (
    GeneratorStart,
    Granted,
    Rollout,
    Stats,
    Stop,
    UnexpectedMessage,
    WeightsReady,
)

if TYPE_CHECKING:
    from workbench.recipes.rl.spec import RLSpec
    from workbench.recipes.rl.transport import Link

STATS_EVERY_S = 0.25
ASK_AGAIN_S = 0.1  # a refused ask for a group is repeated after this, weights unchanged


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


def generator_main(start: GeneratorStart) -> None:
    """Process entry: a multiprocessing child of the trainer (local), or
    `python -m workbench.recipes.rl.remote` started over ssh (another host). Both run
    this, with the trainer's `GeneratorStart` (messages.py)."""
    if start.parent_pid is not None:
        _watch_parent(start.parent_pid)
    import torch

    from workbench.recipes.common.seeding import seed_everything
    from workbench.spec import parse_spec

    torch.set_num_threads(1)
    spec: RLSpec = parse_spec(start.spec_toml)  # type: ignore[assignment]
    link = connect(start, spec)  # first: the trainer waits for every handshake
    weights = join_weights_group(start, spec)
    seed_everything(spec.seed)
    engine, tokenizer = load_engine(spec, start, weights)
    room = start.model_config["seq_len"] - spec.rollout.l_max  # leaves l_max for the answer
    loop = Loop(spec, start.rank, link, weights, engine, tokenizer, room)
    print(f"generator {start.rank}: pid {os.getpid()} on {socket.gethostname()}, "
          f"{spec.rollout.slots} slots, version {start.version}", flush=True)
    loop.run()
    leave(0)


# ----------------------------------------------------------------------------- setup


def connect(start: GeneratorStart, spec: RLSpec) -> Link:
    """The link to the trainer's hub (transport.Link), handshake done; leave(1) on a
    refusal or no answer. It leaves once the trainer is silent for
    `rollout.trainer_timeout_s`."""
    from workbench.recipes.rl.transport import Link, LinkError

    try:
        return Link(start.address, start.secret, start.rank,
                    peer_timeout_s=spec.rollout.trainer_timeout_s)
    except LinkError as exc:
        print(f"generator {start.rank}: {exc}", flush=True)
        leave(1)


@dataclass
class Weights:
    """This generator's end of the weights broadcast: its {0, rank} gloo group and the
    flat fp32 buffer each broadcast lands in."""

    group: Any
    flat: Any = None  # torch.Tensor, sized once the model exists
    named: list[tuple[str, Any]] = field(default_factory=list)  # the model's parameters

    def receive(self) -> dict[str, Any]:
        """The next broadcast (the trainer is rank 0), as views shaped like `named`."""
        import torch.distributed as dist

        dist.broadcast(self.flat, src=0, group=self.group)
        return unflatten(self.flat, self.named)


def join_weights_group(start: GeneratorStart, spec: RLSpec) -> Weights:
    """Join the trainer's torch.distributed group (gloo, its TCPStore on `dist_address`)
    and make every {0, i} group, as every rank must, in the same order. Every wait in
    it (the join, each broadcast) is bounded by `rollout.weights_timeout_s`, as the
    trainer's."""
    import torch.distributed as dist

    if start.dist_address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    host, _, port = start.dist_address.rpartition(":")
    timeout = timedelta(seconds=spec.rollout.weights_timeout_s)
    store = dist.TCPStore(host.strip("[]"), int(port), world_size=start.world,
                          is_master=False,
                          timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=start.rank, world_size=start.world,
                            timeout=timeout)
    # new_group's own default is 30 minutes, not init_process_group's timeout
    groups = [dist.new_group([0, i], timeout=timeout) for i in range(1, start.world)]
    return Weights(groups[start.rank - 1])


def load_engine(spec: RLSpec, start: GeneratorStart, weights: Weights) -> tuple[Any, Any]:
    """(engine, tokenizer): the model allocated without a random init and filled by the
    trainer's first broadcast, then the engine around it. The torch engine decodes on
    the GPU when there is one."""
    import torch

    from workbench.data.tokenizer import load_tokenizer
    from workbench.engine import make_engine
    from workbench.models.gpt import GPT, GPTConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT.empty(GPTConfig(**start.model_config), device=device).eval()
    weights.named = list(model.named_parameters())
    weights.flat = torch.empty(flat_numel([p for _, p in weights.named]))
    with torch.no_grad():  # the starting weights
        for (_, p), v in zip(weights.named, weights.receive().values(), strict=True):
            p.copy_(v)
    tokenizer = load_tokenizer(start.tokenizer_name)
    ro = spec.rollout
    engine = make_engine(spec.engine.name, model, max_batch=ro.slots,
                         max_len=model.config.seq_len, temperature=ro.temperature,
                         seed=spec.seed * 1000 + start.rank, device=device,
                         **engine_options(spec.engine.name, tokenizer))
    engine.version = start.version
    return engine, tokenizer


# ----------------------------------------------------------------------------- the loop


@dataclass
class Tally:
    """What this generator measured since its last `Stats` (see the module doc)."""

    busy_s: float = 0.0
    idle_s: float = 0.0
    tokens: int = 0
    slot_s: float = 0.0  # sum of (sequences decoded x step seconds)
    decode_s: float = 0.0

    def stats(self) -> Stats:
        return Stats(self.busy_s, self.idle_s, self.tokens, self.slot_s, self.decode_s)


class Loop:
    """The decode loop of the module doc: control, admission, one engine step, stats."""

    def __init__(self, spec: RLSpec, rank: int, link: Link, weights: Weights, engine: Any,
                 tokenizer: Any, room: int) -> None:
        from workbench.recipes.rl.tasks import load_jsonl

        self.spec, self.rank, self.link, self.weights = spec, rank, link, weights
        self.engine, self.tokenizer = engine, tokenizer
        t = spec.tasks
        self.problems = load_jsonl(t.path, t.verifier, t.prompt_field, t.answer_field,
                                   answer_format=t.answer_format) if t.path else None
        self.room = room  # prompt tokens that leave l_max for the answer
        self.pending: tuple[dict[str, Any], int] | None = None  # weights waiting to load
        self.received = engine.version  # the newest weights version received
        self.granted: list[int] = []  # groups the trainer gave this generator, not started
        self.refused_at: tuple[int, float] | None = None  # (engine version, when) of a "none"
        self.tally = Tally()
        self.next_id = 0
        self.last_stats = time.monotonic()

    def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            if self.control():
                return
            self.load_pending_weights()
            self.admit()
            self.decode(t0)
            self.report()

    def control(self) -> bool:
        """1. Messages from the trainer: granted groups, weights, stop. True to stop."""
        from workbench.recipes.rl.transport import LinkError

        try:
            messages = self.link.poll(0 if self.engine.has_work() else 5)
        except LinkError as exc:
            print(f"generator {self.rank}: {exc}; leaving", flush=True)
            leave(1)
        for message in messages:
            match message:
                case Stop():
                    return True
                case WeightsReady(version) if version <= self.received:
                    pass  # announced again after a reconnection, but already received
                case WeightsReady(version):
                    state = {k: v.clone() for k, v in self.weights.receive().items()}
                    self.pending = (state, version)
                    self.received = version
                case Granted(groups=groups):  # [] = none admissible now
                    self.granted += groups
                    self.refused_at = None if groups else (self.engine.version,
                                                           time.monotonic())
                case _:
                    raise UnexpectedMessage(f"generator {self.rank}", message)
        return False

    def load_pending_weights(self) -> None:
        """New weights load at once with `rollout.inflight`, else once nothing is in
        flight on the old ones."""
        if self.pending is not None and (self.spec.rollout.inflight
                                         or self.engine.num_active() == 0):
            self.engine.load_weights(*self.pending)
            self.pending = None

    def admit(self) -> None:
        """2. Start granted groups (nothing new while old weights wait to be replaced).

        Keep one group queued behind full slots: a slot freed by a short answer is
        refilled at once instead of idling until the group's longest answer ends. Groups
        come from the trainer (transport.Groups, the staleness rule against the weights
        this engine holds); a refusal is asked again once these weights change or after a
        moment (a restarted group may have become available)."""
        from workbench.engine import Request

        engine, G, ro = self.engine, self.spec.grpo.group_size, self.spec.rollout
        while self.pending is None and engine.num_waiting() < G and \
                engine.num_active() + engine.num_waiting() < ro.slots + G:
            if not self.granted:
                if self.refused_at is None or self.refused_at[0] != engine.version or \
                        time.monotonic() - self.refused_at[1] > ASK_AGAIN_S:
                    self.link.ask(1, engine.version)
                return
            g = self.granted.pop(0)
            problem, prompt = draw_problem(self.spec, g, self.problems, self.room,
                                           self.tokenizer)
            for i in range(G):
                engine.add(Request(id=self.next_id, prompt=prompt, max_new_tokens=ro.l_max,
                                   meta={"group": g, "index": i, "problem": problem}))
                self.next_id += 1

    def decode(self, t0: float) -> None:
        """3. One engine step; finished completions go to the trainer. Time since `t0`
        counts as busy, or idle when there was nothing to decode."""
        engine, tally = self.engine, self.tally
        if not engine.has_work():
            tally.idle_s += time.perf_counter() - t0
            return
        t_step = time.perf_counter()
        done = engine.step(admit=self.pending is None)  # old weights: drain, admit nothing
        decoded = engine.num_active() + len(done)
        if decoded:
            dt = time.perf_counter() - t_step
            tally.slot_s += decoded * dt
            tally.decode_s += dt
        for c in done:
            tally.tokens += len(c.tokens)
            self.link.rollout(Rollout(
                group=c.meta["group"], index=c.meta["index"], problem=c.meta["problem"],
                prompt=c.prompt, tokens=c.tokens, logprobs=c.logprobs, versions=c.versions,
                finish=c.finish, text=self.tokenizer.decode(c.tokens)))
        tally.busy_s += time.perf_counter() - t0

    def report(self) -> None:
        """Stats every STATS_EVERY_S, and as soon as the work runs out (a synchronous
        batch's end): that batch's figures then reach the trainer ahead of the next
        batch's completions."""
        if time.monotonic() - self.last_stats > STATS_EVERY_S or (
                self.tally.decode_s and not self.engine.has_work()):
            self.link.send(self.tally.stats())
            self.tally = Tally()
            self.last_stats = time.monotonic()
