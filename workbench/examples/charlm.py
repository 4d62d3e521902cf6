"""A byte-level MLP language model on the Python standard library's source.

The reference "bring your own script": it logs through `workbench.init()`
exactly as a user's script would, reports loss spikes as events, checkpoints
on SIGTERM (`wb stop`) and at the end, and continues from WB_RESUME_DIR
(`wb resume`). Launch it with `wb launch charlm`, or run it directly:
`python -m workbench.examples.charlm`.
"""

from __future__ import annotations

import math
import os
import signal
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import workbench
from workbench.signals import SpikeDetector

DEFAULTS = {"steps": 300, "batch": 128, "context": 16, "embed": 32, "hidden": 512,
            "lr": 3e-3, "warmup": 30, "eval_every": 50, "corpus_mb": 4, "seed": 0}


def corpus(limit_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stdlib .py files, sorted, as bytes; every 20th file goes to validation."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    train, val, size = [], [], 0
    for i, path in enumerate(files):
        data = path.read_bytes()
        (val if i % 20 == 0 else train).append(data)
        size += len(data)
        if size >= limit_bytes:
            break
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)  # noqa: E731
    return as_tensor(train).long(), as_tensor(val).long()


class MLP(nn.Module):
    def __init__(self, context: int, embed: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(256, embed)
        self.fc = nn.Linear(context * embed, hidden)
        self.out = nn.Linear(hidden, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(self.emb(x).flatten(1))))


def batch(data: torch.Tensor, n: int, context: int, gen: torch.Generator):
    idx = torch.randint(0, len(data) - context - 1, (n,), generator=gen)
    offsets = torch.arange(context + 1)
    window = data[idx[:, None] + offsets]
    return window[:, :-1], window[:, -1]


def lr_at(step: int, cfg: dict) -> float:
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    progress = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def main() -> None:
    run = workbench.init(name="charlm", config=DEFAULTS, kind="script")
    cfg = {**DEFAULTS, **{k: v for k, v in run.config.items() if k in DEFAULTS}}
    run.set_total_steps(cfg["steps"])
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    train, val = corpus(cfg["corpus_mb"] << 20)
    model = MLP(cfg["context"], cfg["embed"], cfg["hidden"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.1)
    ckpt = run.dir / "checkpoints"
    start = 0
    resume = os.environ.get("WB_RESUME_DIR")
    if resume and (Path(resume) / "checkpoints" / "model.safetensors").exists():
        src = Path(resume) / "checkpoints"
        model.load_state_dict(load_file(src / "model.safetensors"))
        state = torch.load(src / "state.pt", weights_only=False)
        opt.load_state_dict(state["optim"])
        gen.set_state(state["gen"])
        start = state["step"]
        run.event("checkpoint", step=start, action="resumed", source=str(src))
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    spikes = SpikeDetector()

    def save(step: int) -> None:
        ckpt.mkdir(exist_ok=True)
        save_file(model.state_dict(), ckpt / "model.safetensors")
        torch.save({"optim": opt.state_dict(), "gen": gen.get_state(), "step": step},
                   ckpt / "state.pt")
        run.event("checkpoint", step=step, path=str(ckpt))

    step = start
    t_last = time.perf_counter()
    for step in range(start, cfg["steps"]):
        if stop:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = batch(train, cfg["batch"], cfg["context"], gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        now = time.perf_counter()
        value = loss.item()
        run.log({"train/loss": value, "train/lr": lr_at(step, cfg),
                 "train/grad_norm": grad_norm.item(),
                 "perf/tokens_per_s": cfg["batch"] / (now - t_last)}, step=step)
        t_last = now
        if (spike := spikes.update(step, value)) is not None:
            run.event("loss_spike" if spike.kind == "spike" else "nan", step=step,
                      severity="warning", value=spike.value, baseline=spike.baseline,
                      score=spike.score)
        if step % cfg["eval_every"] == 0 or step == cfg["steps"] - 1:
            with torch.no_grad():
                xv, yv = batch(val, 1024, cfg["context"], torch.Generator().manual_seed(1))
                run.log({"val/loss": F.cross_entropy(model(xv), yv).item()}, step=step)
    else:
        step = cfg["steps"]
    save(step)
    print(f"charlm: {'stopped' if stop else 'done'} at step {step}", flush=True)
    run.finish("stopped" if stop else "finished")


if __name__ == "__main__":
    main()
