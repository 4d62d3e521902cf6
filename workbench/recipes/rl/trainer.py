"""The trainer: entry point of the `rl` kind, and the process every other role hangs off.

Roles, each its own OS process:
- N generators (generator.py), decoding continuously with the embedded engine: here
  (multiprocessing, spawn), and on the hosts of `rollout.hosts` over ssh
  (remote.py); the same code in both places;
- a pool of verifiers (verifier.py), each check under a timeout;
- this trainer, which also routes: completions arrive through the hub, go to the
  verifiers, and come back scored.

Transport: ZeroMQ for rollouts and control (transport.py: a ROUTER bound on
`rollout.bind`, a DEALER per generator, a per-run secret proven in the handshake,
at-least-once delivery de-duplicated by (group, index), group ids granted under the
staleness rule), and torch.distributed for weights (gloo, one flat fp32 CPU tensor,
also when the trainer is on a GPU: NCCL between the GPUs of different hosts is not
built), its rendezvous on the same address alone (`rendezvous`): the trainer is rank 0
and broadcasts the flattened parameters, with a version number, over a {0, i} group
per generator. One group per generator, rather than one broadcast to all, so a dead
generator (kill -9, a dropped ssh connection) breaks only its own link: the trainer
records a `generator_lost` event and goes on with the others, which take over its
unfinished groups.

A step: wait for the groups of batch `version` in order (group g belongs to batch
g // groups_per_step), score them, compute Magistral's GRPO loss with the
generators' log-probs as the behaviour policy, update, bump the version, broadcast.
Staleness of a sample = the version that trains on it minus the oldest version
among its tokens; the generators' admission rule keeps it <= max_staleness.
Log-probs on both sides are the sampling distribution's (logits / rollout.temperature),
so the importance ratio is 1 on-policy. How far the generators' policy is from the
trained one, per token, as k3 (update.py): `rl/mismatch_kl` over the tokens the
trained weights generated themselves (train/inference mismatch alone; absent in a step
without such tokens), `rl/drift_kl/s<s>` over the tokens generated s versions earlier
(mismatch plus drift), s = 0..max_staleness as present. `rl/logprob_kl` is the older
k1 over kept tokens, every staleness mixed.

Stop (`wb stop`, SIGTERM): the loop checkpoints and returns, then `stop_roles` takes
the generators, verifiers and the process group down in bounded time.

The policy: a byte-level GPT (warm start, random, a pretrain run) whose prompts are BOS
+ the task text, or a Hugging Face checkpoint (`policy.init = "hf:<folder>"`, loaded by
models/hf.py into the same GPT) whose prompts go through its chat template with
`policy.system_prompt` and whose turns end on any of its tokenizer's stop ids. The
tokenizer is recorded in the run's config; the trainer and every generator load their
own from the same "bytes" / "hf:<folder>" string.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model

from workbench.data.tokenizer import ByteTokenizer, HFTokenizer, info, load_tokenizer
from workbench.hosts import LOCAL
from workbench.models.gpt import GPT, GPTConfig
from workbench.models.hf_config import HF_PREFIX, hf_folder
from workbench.recipes import Context
from workbench.recipes.common.checkpoint import checkpoints_in, clean_tmp, write_checkpoint
from workbench.recipes.common.seeding import seed_everything
from workbench.recipes.rl.generator import generator_main
from workbench.recipes.rl.grpo import group_advantages
from workbench.recipes.rl.messages import (
    FromGenerator,
    GeneratorJoined,
    GeneratorLost,
    GeneratorStart,
    Inbound,
    PeerRefused,
    Rollout,
    Stats,
    Stop,
    UnexpectedMessage,
    WeightsReady,
)
from workbench.recipes.rl.spec import EXAMPLE_INIT, RLSpec
from workbench.recipes.rl.transport import Groups, Hub, endpoint, new_secret
from workbench.recipes.rl.update import accumulate_grpo
from workbench.recipes.rl.verifier import VerifierPool
from workbench.spec import dump_toml

POLL_S = 0.05
VERIFY_POLL_S = 0.002
STOP_GRACE_S = 3.0  # for the generators to leave once told to stop (then killed)
KEEP_CHECKPOINTS = 2  # the newest kept on disk, as pretrain's default keep_checkpoints


# ----------------------------------------------------------------------------- policy


def policy_source(spec: RLSpec, ctx: Context) -> str:
    """Where the policy's weights and tokenizer come from, as load_tokenizer takes it:
    "hf:<folder>" for a checkpoint (hf:example: the example, written into the store's
    cache on first use) or a pretrain run that started from one, "bytes" for everything
    else built here or pretrained by a run."""
    init = spec.policy.init
    if init.startswith("run:"):
        start = getattr(pretrain_row(init[4:], ctx)[1].model, "init", "scratch")
        return start if start.startswith(HF_PREFIX) else "bytes"
    if init == EXAMPLE_INIT:
        from workbench.models.example import ensure_example_model, example_folder

        cache = ctx.run.root / "cache"
        if not (example_folder(cache) / "config.json").is_file():
            print("rl: writing the example checkpoint into the store's cache (first use)",
                  flush=True)
        return f"{HF_PREFIX}{ensure_example_model(cache)}"
    return init if init.startswith(HF_PREFIX) else "bytes"


def policy_tokenizer(source: str) -> ByteTokenizer | HFTokenizer:
    """The policy's tokenizer; a checkpoint's must have a chat template (the prompts go
    through it). Raises TokenizerError in one line."""
    tokenizer = load_tokenizer(source)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.require_chat_template()
    return tokenizer


def build_policy(spec: RLSpec, ctx: Context, source: str = "bytes") -> GPT:
    """The starting policy: a checkpoint folder (`source` = "hf:<folder>"), a cached warm
    start, random init, or a pretrain run's weights."""
    init = spec.policy.init
    folder = hf_folder(source)
    if folder is not None:
        from workbench.models.hf import load_hf

        print(f"rl: policy from {folder}", flush=True)
        return load_hf(folder, seq_len=spec.policy.seq_len, attn_backend="sdpa")
    if init.startswith("run:"):
        return policy_from_run(init[4:], ctx)
    config = policy_config(spec)
    if init == "random":
        torch.manual_seed(spec.seed)
        return GPT(config)
    from workbench.recipes.rl.warmstart import WarmStartConfig, warm_start

    options: dict[str, Any] = {"n_layer": config.n_layer, "n_head": config.n_head,
                               "d_model": config.d_model, "seq_len": config.seq_len,
                               "tasks": tuple(spec.tasks.names), "seed": spec.seed}
    if spec.policy.warmstart_steps:
        options["steps"] = spec.policy.warmstart_steps
    ws = WarmStartConfig(**options)
    print("rl: warm start (cached after the first run)", flush=True)
    t0, every = time.perf_counter(), max(1, ws.steps // 10)

    def progress(step: int, loss: float) -> None:
        if (step + 1) % every == 0:
            print(f"rl: warm start step {step + 1}/{ws.steps} loss {loss:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    return warm_start(ws, ctx.run.root / "cache" / "warmstart", progress)


def policy_config(spec: RLSpec) -> GPTConfig:
    p = spec.policy
    return GPTConfig(seq_len=p.seq_len, n_layer=p.n_layer, n_head=p.n_head, d_model=p.d_model,
                     attn_backend="sdpa")


def pretrain_row(ref: str, ctx: Context) -> tuple[dict[str, Any], Any]:
    """(row, parsed spec) of the pretrain run `ref` in this store."""
    from workbench.spec import parse_spec
    from workbench.store import Store

    store = Store(ctx.run.root, create=False)
    try:
        row = store.resolve(ref)
    finally:
        store.close()
    if row.kind != "pretrain":
        raise ValueError(f"policy.init run:{ref} is a {row.kind} run; give a pretrain run")
    return row, parse_spec(row.spec)


def policy_from_run(ref: str, ctx: Context) -> GPT:
    """The latest checkpoint of a pretrain run in this store (its shape from its spec,
    which for a run started from a checkpoint is that checkpoint's)."""
    row, spec = pretrain_row(ref, ctx)
    found = checkpoints_in(ctx.run.root / row.id / "checkpoints")
    if not found:
        raise ValueError(f"policy.init run:{ref} has no checkpoint yet")
    config = spec.model.gpt_config()
    config.attn_backend = "sdpa"
    model = GPT.empty(config)
    load_model(model, str(found[-1] / "model.safetensors"))
    print(f"rl: policy from run {row.id} ({found[-1].name})", flush=True)
    return model


# ----------------------------------------------------------------------------- batches


@dataclass
class Sample:
    rank: int  # the generator that produced it
    group: int
    index: int
    problem: Any
    prompt: list[int]
    tokens: list[int]
    logprobs: list[float]
    versions: list[int]
    finish: str
    text: str
    score: Any = None

    @classmethod
    def of(cls, rank: int, r: Rollout) -> Sample:
        """A delivered rollout, to be scored and trained on."""
        return cls(rank, r.group, r.index, r.problem, r.prompt, r.tokens, r.logprobs,
                   r.versions, r.finish, r.text)


def quantiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def policy_kl_metrics(k3_by_staleness: dict[int, float]) -> dict[str, float]:
    """`rl/mismatch_kl` and `rl/drift_kl/s<s>` from a step's k3 means by staleness.

    `rl/mismatch_kl`: k3 over the tokens generated by the weights being trained (the
    train/inference mismatch alone); absent, not 0, in a step with no such token (an
    async step often has none: 0 would claim a perfect match nothing measured).
    `rl/drift_kl/s<s>`: k3 over the tokens generated s versions earlier (mismatch plus s
    updates of drift), for each s present, at most rollout.max_staleness by the
    admission rule; s0 equals the mismatch."""
    out = {f"rl/drift_kl/s{s}": v for s, v in k3_by_staleness.items()}
    if 0 in k3_by_staleness:
        out["rl/mismatch_kl"] = k3_by_staleness[0]
    return out


# ----------------------------------------------------------------------------- trainer


@dataclass
class Roles:
    """The other processes and the links to them."""

    generators: dict[int, Any]  # rank -> Process (local) or RemoteGenerator (ssh)
    hub: Hub  # rollouts, stats and control, to and from every generator
    groups: dict[int, Any]  # rank -> {0, rank} process group
    verifiers: VerifierPool
    hosts: dict[int, str] = field(default_factory=dict)  # rank -> host name
    lost: set[int] = field(default_factory=set)
    rendezvous: Any = None  # torch.distributed's TCPStore (on rollout.bind)


class RemoteGenerator:
    """A generator on another host: the ssh client that started it, read as a process
    (it lives as long as the remote generator; kill -9 there ends it here)."""

    def __init__(self, host: Any, rank: int, start: GeneratorStart) -> None:
        import subprocess

        self.host = host.name
        argv = host.ssh_argv([host.python, "-m", "workbench.recipes.rl.remote"])
        # stdin: the arguments (the run's secret among them) on one line, then held
        # open: its end (this process gone) makes the remote generator leave.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(start.to_json() + "\n")
        self.proc.stdin.flush()
        self.pid = self.proc.pid
        self.rank = rank

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def join(self, timeout: float | None = None) -> None:
        import subprocess

        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        self.proc.kill()

    def close_stdin(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass


class Trainer:
    def __init__(self, spec: RLSpec, ctx: Context, model: GPT) -> None:
        # The trainer takes the GPU when there is one; the weights still travel to the
        # generators as one flat CPU tensor over gloo.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.spec, self.ctx, self.model = spec, ctx, model.to(self.device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=spec.grpo.lr,
                                     weight_decay=spec.grpo.weight_decay, betas=(0.9, 0.99))
        self.version = 0
        self.samples: dict[int, dict[int, Sample]] = defaultdict(dict)
        self.pending: dict[int, Sample] = {}  # at the verifiers, by a key of their own
        self.next_key = 0
        self.gen_busy = self.gen_idle = 0.0
        self.gen_tokens = 0
        self.slot_s = self.decode_s = 0.0  # from the generators' stats (slot occupancy)
        self.idle_s = 0.0
        self.t_mark = time.perf_counter()
        self.roles: Roles | None = None
        self.saved_version = -1
        self.tokens_by: dict[int, int] = {}  # generator rank -> tokens in its stats
        self.taken = 0  # rollouts the hub passed on since the last step (each key once)
        self.duplicates_seen = 0  # the hub's count of dropped copies, at the last step

    # -- weights ----------------------------------------------------------------------

    def flat(self) -> torch.Tensor:
        """Every parameter, float32, flattened into one CPU tensor (gloo's broadcast)."""
        return torch.cat([p.detach().reshape(-1).float() for p in self.model.parameters()]).cpu()

    def broadcast(self) -> float:
        """Send the current weights (and version) to every live generator."""
        roles = self.roles
        assert roles is not None
        t0 = time.perf_counter()
        flat = self.flat()
        # Announced to each generator just before its own broadcast, not to all first: a
        # generator told early would wait in its broadcast, silent, behind a frozen one
        # for up to rollout.weights_timeout_s, and time out (lost) as well.
        for r in [r for r in roles.generators if r not in roles.lost]:
            if not roles.generators[r].is_alive():
                self.generator_lost(r)
                continue
            roles.hub.announce(r, WeightsReady(self.version))  # again if it reconnects
            try:
                dist.broadcast(flat, src=0, group=roles.groups[r])
            except RuntimeError as exc:  # the peer died mid-transfer
                self.generator_lost(r, str(exc))
            finally:
                roles.hub.broadcast_done(r)
        return time.perf_counter() - t0

    def generator_lost(self, rank: int, why: str = "") -> None:
        roles = self.roles
        assert roles is not None
        if rank in roles.lost:
            return
        roles.lost.add(rank)
        roles.hub.drop(rank)
        code = roles.generators[rank].exitcode
        host = roles.hosts.get(rank, "local")
        self.ctx.run.event("generator_lost", step=self.version, severity="error",
                           generator=rank, host=host, exit_code=code,
                           reason=why or "process exited",
                           remaining=len(roles.generators) - len(roles.lost))
        print(f"rl: generator {rank} on {host} lost (exit code {code}); "
              f"{len(roles.generators) - len(roles.lost)} remain", flush=True)
        if len(roles.lost) == len(roles.generators):
            raise RuntimeError("every generator is gone; nothing can produce rollouts")
        self.restart_groups(rank)

    def restart_groups(self, rank: int) -> None:
        """A lost generator's unfinished groups start again, whole, on whichever live
        generator asks first (transport.Groups): nothing is dropped, and a batch never
        waits for a group no one generates."""
        roles = self.roles
        assert roles is not None
        G = self.spec.grpo.group_size
        hub = roles.hub
        with hub.lock:
            owned = [g for g, r in hub.groups.owner.items() if r == rank]
            redo = sorted(g for g in owned if len(self.samples.get(g, {})) < G)
            hub.groups.restart(redo)
        for g in redo:
            self.samples.pop(g, None)
        if redo:
            print(f"rl: groups {redo} restarted on the other generators", flush=True)

    # -- collecting -------------------------------------------------------------------

    def pump(self, block_s: float) -> None:
        """Move completions to the verifiers and scores into groups for up to `block_s`,
        returning early once the next batch is complete."""
        roles = self.roles
        assert roles is not None
        deadline = time.monotonic() + block_s
        while True:
            # Short waits while checks are out: their results arrive on the verifiers'
            # pipes, which this get() does not watch.
            poll = VERIFY_POLL_S if roles.verifiers.outstanding() else POLL_S
            try:
                msg = roles.hub.inbox.get(
                    timeout=max(0.0, min(poll, deadline - time.monotonic())))
            except queue.Empty:
                msg = None
            if msg is not None:
                self.handle(msg)
            for key, score in roles.verifiers.results():
                s = self.pending.pop(key, None)
                if s is not None and s.rank not in roles.lost:
                    s.score = score
                    self.samples[s.group][s.index] = s
            for r, proc in roles.generators.items():
                if r not in roles.lost and not proc.is_alive():
                    self.generator_lost(r)
            if (msg is None and time.monotonic() >= deadline) or self.batch_ready():
                return

    def handle(self, msg: Inbound) -> None:
        """One item of the hub's inbox (transport.Hub; messages.Inbound).
        UnexpectedMessage for anything else: a bug, not something to skip."""
        roles = self.roles
        assert roles is not None
        match msg:
            case FromGenerator(rank, Rollout() as r):
                if rank in roles.lost:  # its groups restart elsewhere
                    return
                self.gen_tokens += len(r.tokens)
                self.taken += 1
                self.pending[self.next_key] = Sample.of(rank, r)
                roles.verifiers.submit(self.next_key, r.problem, r.text, len(r.tokens))
                self.next_key += 1
            case FromGenerator(rank, Stats() as st):
                self.gen_busy += st.busy_s
                self.gen_idle += st.idle_s
                self.slot_s += st.slot_s
                self.decode_s += st.decode_s
                self.tokens_by[rank] = self.tokens_by.get(rank, 0) + st.tokens
            case GeneratorLost(rank, reason):
                if rank in roles.generators:
                    self.generator_lost(rank, reason)
            case GeneratorJoined(rank, again=True, weights_resent=resent):
                # a new session after a dropped connection (ZeroMQ reconnected)
                self.ctx.run.event("generator_reconnected", step=self.version,
                                   severity="warning", generator=rank,
                                   host=roles.hosts.get(rank, LOCAL), weights_resent=resent)
                print(f"rl: generator {rank} reconnected"
                      + ("" if resent is None else f"; weights {resent} announced again"),
                      flush=True)
            case GeneratorJoined():
                pass  # wait_joined reads Hub.joined()
            case PeerRefused():
                detail = msg.detail()
                self.ctx.run.event("peer_refused", step=self.version, severity="warning",
                                   **detail)
                print(f"rl: refused a connection to the rollout endpoint: {detail}",
                      flush=True)
            case _:
                raise UnexpectedMessage("rl trainer", msg)

    def batch_ready(self) -> bool:
        per, G = self.spec.grpo.groups_per_step, self.spec.grpo.group_size
        first = self.version * per
        return all(len(self.samples.get(g, {})) == G for g in range(first, first + per))

    # -- one step ---------------------------------------------------------------------

    def step(self) -> None:
        spec, run = self.spec, self.ctx.run
        per, G = spec.grpo.groups_per_step, spec.grpo.group_size
        first = self.version * per
        batch = [self.samples[g][i] for g in range(first, first + per) for i in range(G)]
        for g in range(first, first + per):
            del self.samples[g]
        t_train = time.perf_counter()
        rewards = torch.tensor([s.score.reward for s in batch], dtype=torch.float32)
        gids = torch.tensor([s.group for s in batch])
        adv, keep = group_advantages(rewards, gids)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        upd = accumulate_grpo(self.model, batch, adv, keep, spec.grpo.eps_low,
                              spec.grpo.eps_high, spec.grpo.micro_batch_tokens, self.device,
                              temperature=spec.rollout.temperature, version=self.version)
        if keep.any():
            if spec.grpo.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), spec.grpo.grad_clip)
            self.opt.step()
        self.version += 1
        assert self.roles is not None
        with self.roles.hub.lock:
            self.roles.hub.groups.trained(first + per)
        sync_s = self.broadcast()
        train_s = time.perf_counter() - t_train
        run.event("weight_sync", step=self.version, version=self.version, seconds=sync_s,
                  generators=len(self.roles.generators) - len(self.roles.lost))

        # metrics
        lengths = [len(s.tokens) for s in batch]
        stale = [self.version - 1 - min(s.versions) for s in batch if s.versions]
        now = time.perf_counter()
        wall = now - self.t_mark
        self.t_mark = now
        gen_total = self.gen_busy + self.gen_idle
        with self.roles.hub.lock:
            duplicates = self.roles.hub.duplicates
        q = quantiles(lengths)
        metrics = {
            "rl/reward": float(rewards.mean()),
            "rl/accuracy": float(np.mean([s.score.correct for s in batch])),
            "rl/format": float(np.mean([s.score.format_ok for s in batch])),
            "rl/entropy": upd.entropy, "rl/clip_frac": upd.clip_frac,
            "rl/zero_adv_frac": 1.0 - float(keep.float().mean()),
            "rl/logprob_kl": upd.kl, "rl/loss": upd.loss,
            "rollout/len_p50": q["p50"], "rollout/len_p90": q["p90"],
            "rollout/len_p99": q["p99"], "rollout/len_max": q["max"],
            "rollout/truncated_frac": float(np.mean([s.finish == "length" for s in batch])),
            "staleness/mean": float(np.mean(stale)) if stale else 0.0,
            "staleness/max": float(max(stale)) if stale else 0.0,
            "perf/gen_tokens_per_s": self.gen_tokens / max(wall, 1e-9),
            "perf/trainer_idle_frac": min(1.0, self.idle_s / max(wall, 1e-9)),
            "perf/generator_idle_frac": self.gen_idle / gen_total if gen_total else 0.0,
            "perf/train_step_s": train_s,
            "sync/seconds": sync_s, "policy/version": float(self.version),
            # delivery (transport.py): new rollouts taken, and copies dropped as repeats
            "rl/rollouts": float(self.taken),
            "rl/duplicates_dropped": float(duplicates - self.duplicates_seen),
        }
        self.taken, self.duplicates_seen = 0, duplicates
        metrics.update(policy_kl_metrics(upd.k3_by_staleness))
        # per generator (its host in the run's config, `generator_hosts`)
        for r, n in sorted(self.tokens_by.items()):
            metrics[f"perf/gen_tokens_per_s/g{r}"] = n / max(wall, 1e-9)
        self.tokens_by = {}
        if self.decode_s:  # absent, not 0, when no generator stats arrived in this step
            metrics["perf/slot_occupancy"] = self.slot_s / (self.decode_s * spec.rollout.slots)
        run.log(metrics, step=self.version)
        run.log_dist("rollout/length", lengths, step=self.version)
        run.log_dist("staleness", stale or [0], step=self.version)
        self.gen_busy = self.gen_idle = 0.0
        self.gen_tokens = 0
        self.slot_s = self.decode_s = 0.0
        self.idle_s = 0.0
        every = max(1, spec.grpo.steps // 50)
        if self.version % every == 0 or self.version == spec.grpo.steps:
            print(f"step {self.version}/{spec.grpo.steps} reward {metrics['rl/reward']:.3f} "
                  f"acc {metrics['rl/accuracy']:.3f} len p50 {q['p50']:.0f} max {q['max']:.0f} "
                  f"stale {metrics['staleness/mean']:.2f} "
                  f"idle {metrics['perf/trainer_idle_frac']:.2f}", flush=True)
        if spec.grpo.checkpoint_every and self.version % spec.grpo.checkpoint_every == 0:
            self.save("periodic")

    # -- checkpoints ------------------------------------------------------------------

    def save(self, reason: str) -> None:
        """Checkpoint this version (once) through the shared atomic, fsynced writer
        (workbench/recipes/common/checkpoint.py), keeping the newest KEEP_CHECKPOINTS."""
        if self.saved_version == self.version:
            return

        def write(tmp: Path) -> None:
            save_model(self.model, str(tmp / "model.safetensors"))
            torch.save({"version": self.version, "optimizer": self.opt.state_dict(),
                        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                "numpy": np.random.get_state()},
                        "model_config": vars(self.model.config)}, tmp / "state.pt")

        final = write_checkpoint(self.ctx.checkpoint_dir, self.version, write,
                                 KEEP_CHECKPOINTS)
        self.saved_version = self.version
        self.ctx.run.event("checkpoint", step=self.version, path=str(final), reason=reason)

    def restore(self) -> bool:
        clean_tmp(self.ctx.checkpoint_dir)  # a killed write's leftovers (or its only copy)
        sources = [self.ctx.checkpoint_dir]
        if self.ctx.resume_dir is not None:
            sources.append(self.ctx.resume_dir / "checkpoints")
        for folder in sources:
            found = checkpoints_in(folder)
            if found:
                path = found[-1]
                load_model(self.model, str(path / "model.safetensors"))
                state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
                self.opt.load_state_dict(state["optimizer"])
                self.version = int(state["version"])
                torch.set_rng_state(state["rng"]["torch"])
                random.setstate(state["rng"]["python"])
                np.random.set_state(state["rng"]["numpy"])
                self.saved_version = self.version if folder == self.ctx.checkpoint_dir else -1
                self.ctx.run.event("checkpoint", step=self.version, action="resumed",
                                   path=str(path))
                print(f"rl: resumed from {path} at version {self.version}", flush=True)
                return True
        return False

    # -- the loop ---------------------------------------------------------------------

    def fit(self) -> bool:
        spec = self.spec
        while self.version < spec.grpo.steps:
            if self.ctx.should_stop():
                self.save("stop")
                print(f"rl: stopped at version {self.version}", flush=True)
                return False
            t0 = time.perf_counter()
            while not self.batch_ready():
                if self.ctx.should_stop():
                    break
                self.pump(POLL_S)
            self.idle_s += time.perf_counter() - t0
            if not self.batch_ready():
                continue
            self.step()
        self.save("end")
        return True


# ----------------------------------------------------------------------------- wiring


def rendezvous(bind: str, world: int, timeout_s: float) -> tuple[int, Any]:
    """(port, TCPStore) of torch.distributed's rendezvous for the weights group,
    listening on `bind` alone: a store made from an `init_method` listens on every
    interface, so the socket is bound here and handed over (`master_listen_fd`; the
    store owns and closes it)."""
    listener = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
    listener.bind((bind, 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    store = dist.TCPStore(bind, port, world_size=world, is_master=True,
                          timeout=timedelta(seconds=timeout_s),
                          master_listen_fd=listener.detach(), wait_for_workers=False)
    return port, store


def placement(spec: RLSpec) -> list[str]:
    """The host of each generator, rank 1 first: the local ones, then those of
    `rollout.hosts` in order."""
    remote = [h.host for h in spec.rollout.hosts for _ in range(h.generators)
              if h.host != LOCAL]
    return [LOCAL] * (spec.rollout.generators - len(remote)) + remote


def start_roles(spec: RLSpec, trainer: Trainer, tokenizer_name: str = "bytes") -> Roles:
    """Start the generators (here, and over ssh on the hosts of `rollout.hosts`) and
    verifiers, form the process groups, send version 0, and wait until every generator
    has joined the hub. `tokenizer_name`: the policy's tokenizer as load_tokenizer takes
    it (each generator loads its own)."""
    from workbench.hosts import get_host

    ctx = mp.get_context("spawn")
    hosts = placement(spec)
    world = len(hosts) + 1
    bind = spec.rollout.bind
    if bind in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    secret = new_secret()  # this run's; never in the store
    ro = spec.rollout
    per = spec.grpo.groups_per_step
    hub = Hub(secret, bind, ro.port,
              groups=Groups(trainer.version * per, per, ro.max_staleness, spec.grpo.steps),
              peer_timeout_s=ro.generator_timeout_s)
    port, store = rendezvous(bind, world, ro.weights_timeout_s)
    dist_address = endpoint(bind, port).removeprefix("tcp://")
    model_config = {k: v for k, v in vars(trainer.model.config).items()}
    own = spec.model_copy(deep=True)  # the generators' copy: where they run is not theirs
    own.rollout.hosts = []              # to check (a remote host has its own hosts file)
    via_host, _, via_port = ro.connect.rpartition(":")  # a forward in front of the hub
    address = endpoint(via_host.strip("[]"), int(via_port)) if ro.connect else hub.address
    common = GeneratorStart(rank=0, world=world, address=address,
                            dist_address=dist_address, spec_toml=dump_toml(own),
                            model_config=model_config, tokenizer_name=tokenizer_name,
                            secret=secret, version=trainer.version)
    procs: dict[int, Any] = {}
    for r, host in enumerate(hosts, start=1):
        if host == LOCAL:
            start = replace(common, rank=r, parent_pid=os.getpid())
            p = ctx.Process(target=generator_main, name=f"wb-generator-{r}",
                            args=(start,), daemon=True)
            p.start()
            procs[r] = p
        else:
            procs[r] = RemoteGenerator(get_host(host), r, replace(common, rank=r))
    verifiers = VerifierPool(spec.verifier.procs, spec.verifier.timeout_s, spec.rollout.l_max,
                             spec.rollout.l_cache)
    roles = Roles(procs, hub, {}, verifiers, dict(enumerate(hosts, start=1)),
                  rendezvous=store)
    trainer.roles = roles
    try:
        wait_joined(trainer, roles, ro.join_timeout_s)
    except BaseException:
        stop_roles(roles, grace_s=1.0)
        raise
    timeout = timedelta(seconds=ro.weights_timeout_s)
    dist.init_process_group("gloo", store=store, rank=0, world_size=world, timeout=timeout)
    # new_group's own default is 30 minutes, not init_process_group's timeout: a
    # broadcast to a frozen generator would block that long
    roles.groups.update({r: dist.new_group([0, r], timeout=timeout) for r in range(1, world)})
    trainer.ctx.run.update_config({"generator_hosts": {str(r): h for r, h in
                                                       roles.hosts.items()}})
    flat = trainer.flat()
    for r in range(1, world):
        dist.broadcast(flat, src=0, group=roles.groups[r])
    remote = [h for h in hosts if h != LOCAL]
    where = f", {len(remote)} on {', '.join(sorted(set(remote)))}" if remote else ""
    pids = ", ".join(str(p.pid) for p in procs.values())
    print(f"rl: {len(hosts)} generator{'' if len(hosts) == 1 else 's'} (pids {pids}{where}), "
          f"{spec.verifier.procs} verifier{'' if spec.verifier.procs == 1 else 's'}, "
          f"rollouts over ZeroMQ at {hub.address}"
          f"{f' (dialled at {ro.connect})' if ro.connect else ''}, weights by gloo broadcast "
          f"({flat.numel():,} floats)", flush=True)
    return roles


def wait_joined(trainer: Trainer, roles: Roles, timeout_s: float) -> None:
    """Until every generator has its session with the hub, before the rendezvous (which
    would wait for a dead one for its whole timeout). A generator that exits first, or
    does not join in time, fails the start in one line. Other inbox items (a refused
    stranger) are handled as usual."""
    deadline = time.monotonic() + timeout_s
    while True:
        joined = set(roles.hub.joined())
        waiting = [r for r in roles.generators if r not in joined]
        if not waiting:
            return
        for r in waiting:
            where = f"generator {r} on {roles.hosts.get(r, LOCAL)}"
            if not roles.generators[r].is_alive():
                raise RuntimeError(f"{where} exited before joining (exit code "
                                   f"{roles.generators[r].exitcode}); its output is above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{where} did not join within {timeout_s:g} s "
                                   "(rollout.join_timeout_s)")
        try:
            trainer.handle(roles.hub.inbox.get(timeout=POLL_S))
        except queue.Empty:
            pass


def stop_roles(roles: Roles, grace_s: float = STOP_GRACE_S) -> None:
    """Take every role down in bounded time, so that the run exits within `wb stop`'s
    grace (10 s by default) after its checkpoint.

    Every generator is told to stop through the hub and leaves within a decode step, by
    os._exit (generator.py `leave`); a remote one also leaves when its ssh stdin closes.
    One still alive after `grace_s` (stuck in a broadcast, say) is killed (for a remote
    one: its ssh client, whose end ends the remote process). The verifier pool closes in
    about a second, by force if a check runs. With every peer gone, destroying the gloo
    group returns at once."""
    roles.hub.send(None, Stop())
    deadline = time.monotonic() + grace_s
    time.sleep(0.05)  # for the hub's thread to send it
    for p in roles.generators.values():
        if isinstance(p, RemoteGenerator):
            p.close_stdin()
    for p in roles.generators.values():
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in roles.generators.values():
        if p.is_alive():
            p.kill()
            p.join(timeout=2)
    roles.hub.close()
    roles.verifiers.close()
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a lost generator may leave the group broken
        pass


def run(spec: RLSpec, ctx: Context) -> None:
    """Entry point of the `rl` kind (see the module docstring)."""
    seed_everything(spec.seed)
    torch.set_num_threads(1)
    run_ = ctx.run
    run_.set_total_steps(spec.grpo.steps)
    source = policy_source(spec, ctx)
    tokenizer = policy_tokenizer(source)
    model = build_policy(spec, ctx, source)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"policy.init: the tokenizer has {tokenizer.vocab_size} ids but the "
                         f"model embeds {model.config.vocab_size} — a mismatched checkpoint")
    trainer = Trainer(spec, ctx, model)
    trainer.restore()
    run_.update_config({"policy_params": model.num_params(), "device": str(trainer.device),
                        "policy_config": vars(model.config), "tokenizer": info(tokenizer)})
    roles = start_roles(spec, trainer, source)
    run_.event("stage", step=trainer.version, stage="training", generators=len(roles.generators),
               max_staleness=spec.rollout.max_staleness, inflight=spec.rollout.inflight)
    try:
        done = trainer.fit()
    finally:
        stop_roles(roles)
    if done:
        run_.event("stage", step=trainer.version, stage="done")
