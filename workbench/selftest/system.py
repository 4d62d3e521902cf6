"""System metrics: NVML reports utilization, memory and temperature for every GPU.

Why: the System tab and `sys/gpu{i}/...` metrics come from NVML through
`workbench.sysmetrics.Gpus`; without a GPU host that path is only tested against a
stand-in module. A driver or a MIG/vGPU setup that does not support a query leaves
that metric out silently during runs, so the selftest says so out loud.
"""

from __future__ import annotations

import math
from typing import Any

from workbench.selftest import Context, Outcome, Skip, check
from workbench.sysmetrics import GPU_FIELDS, gpu_key

# Plausible ranges: a value outside is a misread (units, a wrong handle), not a state.
RANGES = {"util": (0.0, 100.0), "mem_mib": (1.0, 4.0e6), "temp_c": (5.0, 120.0)}


def judge_sample(values: dict[str, float], indices: list[int]) -> Outcome:
    """Every GPU index has every field, each finite and within RANGES."""
    out = Outcome()
    for i in indices:
        for name in GPU_FIELDS:
            key = gpu_key(i, name)
            if not out.require(key in values, f"NVML gave no {name} for GPU {i}"):
                continue
            v = values[key]
            lo, hi = RANGES[name]
            out.figures[f"gpu{i}_{name}"] = v
            out.require(math.isfinite(v) and lo <= v <= hi,
                        f"GPU {i} {name} = {v} is outside [{lo:g}, {hi:g}]")
    out.figures["gpus"] = float(len(indices))
    return out


def sample(nvml: Any = None) -> tuple[dict[str, float], list[int]]:
    """One `Gpus.read()` and the NVML indices it covered (``nvml``: a pynvml-like module;
    default pynvml)."""
    from workbench.sysmetrics import Gpus

    gpus = Gpus.open(nvml)
    if gpus is None:
        raise Skip("NVML did not initialise or sees no GPU")
    try:
        return gpus.read(), [i for i, _ in gpus.handles]
    finally:
        gpus.close()


@check("system/nvml", needs=("nvml",),
       summary="NVML samples util, memory and temperature for every GPU")
def nvml_check(ctx: Context) -> Outcome:
    values, indices = sample()
    out = judge_sample(values, indices)
    temps = [out.figures[f"gpu{i}_temp_c"] for i in indices if f"gpu{i}_temp_c" in out.figures]
    out.headline = (f"{len(indices)} GPU{'s' if len(indices) != 1 else ''}: "
                    + ", ".join(f"{out.figures.get(f'gpu{i}_util', math.nan):.0f}% "
                                f"{out.figures.get(f'gpu{i}_mem_mib', math.nan) / 1024:.1f} GiB"
                                for i in indices[:4])
                    + (f", max {max(temps):.0f} °C" if temps else ""))
    return out
