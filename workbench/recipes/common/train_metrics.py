"""Training-dynamics metrics of the shared Trainer (pretrain, depth): update / weight RMS
per optimizer group, SVD entropy, MFU."""

from __future__ import annotations

import math

import torch

from workbench.optim import Routing
from workbench.recipes.common.trained_spec import TrainedSpec


def param_groups(spec: TrainedSpec, routing: Routing) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters per optimizer group, for update / weight RMS."""
    if spec.optim.name == "adamw":
        return {"adamw": [p for _, p in routing.muon + routing.adamw]}
    return {name: [p for _, p in params]
            for name, params in (("muon", routing.muon), ("adamw", routing.adamw)) if params}


def svd_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """A few hidden matrices to track SVD entropy on: q_proj and up_proj of the first
    and the last layer (of a recurrent-depth model: its first and last block)."""
    named = dict(model.named_parameters())
    out = {}
    for suffix in (".attn.q_proj.weight", ".mlp.up_proj.weight"):
        names = [n for n in named if n.endswith(suffix)]
        out.update({n: named[n] for n in dict.fromkeys(names[:1] + names[-1:])})
    return out


PEAK_BF16_FLOPS = {  # dense bf16 tensor-core peak, FLOP/s; matched against the device name
    "H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "4090": 165e12,
    "3090": 71e12, "V100": 125e12, "B200": 2250e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


@torch.no_grad()
def rms(params: list[torch.Tensor]) -> float:
    numel = sum(p.numel() for p in params)
    if not numel:
        return 0.0
    norms = torch._foreach_norm([p.detach().float() for p in params])
    return float(torch.sqrt(torch.stack(norms).square().sum() / numel))


@torch.no_grad()
def svd_entropy(w: torch.Tensor) -> float:
    """-sum p log p / log n with p_i = s_i^2 / sum s^2: 1 for a flat spectrum, 0 for rank 1."""
    s = torch.linalg.svdvals(w.detach().float())
    p = s.square() / s.square().sum().clamp_min(1e-30)
    h = -(p * p.clamp_min(1e-30).log()).sum()
    return float(h / math.log(max(2, s.numel())))


class Snapshot:
    """Parameters before an optimizer step, to measure the update it makes."""

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]]):
        self.groups = groups
        self.before = {g: [p.detach().clone() for p in ps] for g, ps in groups.items()}

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        out = {}
        for g, ps in self.groups.items():
            deltas = torch._foreach_sub([p.detach() for p in ps], self.before[g])
            out[f"optim/update_rms/{g}"] = rms(deltas)
            out[f"optim/weight_rms/{g}"] = rms(ps)
        return out
