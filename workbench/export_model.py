"""`wb export-model`: a run's checkpoint as a Hugging Face folder.

Any pretrain or RL run's checkpoint (the latest, or the one of a given step) becomes
what ``save_pretrained`` writes: config.json, model.safetensors and the tokenizer files
the model came with, so ``transformers.AutoModelForCausalLM.from_pretrained(OUT)`` (and
vLLM) load it. models/hf.py does the writing; this module finds what to write:

- the checkpoint: ``<store>/<run id>/checkpoints/step-NNNNNNNN/`` (pretrain and RL
  write the same layout);
- the model's config, in order: the checkpoint's model.json (pretrain), its state.pt's
  ``model_config`` (RL), else the run's stored spec (pretrain checkpoints written before
  model.json existed). Only gpt-arch models export: a recurrent-depth one has no
  Hugging Face family;
- the tokenizer: the ``hf:<folder>`` the run started from (pretrain ``model.init``, RL
  ``policy.init``, or through ``policy.init = "run:<ref>"`` the pretrain run it names).
  A byte-level model has none: it exports config and weights, with the byte specials
  (BOS 256, EOS 257, PAD 258) in config.json.

Every refusal is an ``ExportError`` (one line naming the problem and the fix) raised
before anything is written; the write itself is atomic (save_hf renames a finished
temporary folder into place).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.models.hf_config import CheckpointError, hf_folder, read_config
from workbench.recipes.common.checkpoint import checkpoint_step, checkpoints_in
from workbench.recipes.common.model_record import read_model_record
from workbench.store import StoreError

if TYPE_CHECKING:
    from workbench.models.config import GPTConfig
    from workbench.models.gpt import GPT
    from workbench.run_record import RunRecord
    from workbench.store import Store

DTYPES = ("float32", "bfloat16")
EXPORTABLE_KINDS = ("pretrain", "rl", "depth")  # kinds that write step-N checkpoints
BYTE_SPECIALS = {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}


class ExportError(ValueError):
    """Bad input for an export; the message is one line naming the problem and the fix."""


@dataclass
class Exported:
    """What an export wrote, for the command's report."""

    out: Path
    run_id: str
    step: int
    family: str
    dtype: str
    files: list[str]
    tokenizer_from: Path | None

    def summary(self) -> str:
        tok = (f"tokenizer from {self.tokenizer_from}" if self.tokenizer_from else
               "no Hugging Face tokenizer files: the model is byte-level (ids 0-255 are "
               "UTF-8 bytes, BOS 256, EOS 257, PAD 258)")
        return (f"wrote {self.out}: {', '.join(self.files)} ({self.family}, {self.dtype}, "
                f"step {self.step} of run {self.run_id}; {tok})")

    def hint(self) -> str:
        load = f"AutoModelForCausalLM.from_pretrained({str(self.out)!r})"
        if self.tokenizer_from:
            return (f"load it: from transformers import AutoModelForCausalLM, AutoTokenizer; "
                    f"model = {load}; tokenizer = AutoTokenizer.from_pretrained("
                    f"{str(self.out)!r})")
        return f"load it: from transformers import AutoModelForCausalLM; model = {load}"


# ----------------------------------------------------------------------------- finding


def pick_checkpoint(st: Store, row: RunRecord, step: int | None) -> Path:
    """The run's checkpoint folder of `step` (None: the latest)."""
    if row.kind not in EXPORTABLE_KINDS:
        raise ExportError(f"run {row.id} is a {row.kind} run, which has no model "
                          "checkpoints — export a pretrain or rl run")
    found = checkpoints_in(st.run_dir(row.id) / "checkpoints")
    if not found and row.is_remote:
        raise ExportError(f"run {row.id} ran on host {row.host}, which holds its "
                          f"checkpoints — run `wb export-model {row.id} OUT_DIR` there")
    if not found:
        raise ExportError(f"run {row.id} ({row.name}) has no checkpoint yet — wait for "
                          "its first checkpoint (or `wb stop` it: a stop checkpoints)")
    if step is None:
        return found[-1]
    by_step = {checkpoint_step(p): p for p in found}
    if step not in by_step:
        have = ", ".join(str(s) for s in sorted(by_step))
        raise ExportError(f"run {row.id} has no checkpoint of step {step} — it has steps "
                          f"{have}; pass one of them to --step, or leave --step out for the "
                          "latest")
    return by_step[step]


def stored_spec(row: RunRecord) -> dict[str, Any]:
    """The run's spec as a plain dict ({} when it has none or it does not parse)."""
    try:
        return tomllib.loads(row.spec or "")
    except (tomllib.TOMLDecodeError, TypeError, ValueError):
        return {}


def init_of(spec: dict[str, Any]) -> str | None:
    """Where the run's model started: pretrain `model.init`, rl `policy.init`."""
    section = spec.get("policy" if spec.get("kind") == "rl" else "model")
    init = section.get("init") if isinstance(section, dict) else None
    return init if isinstance(init, str) else None


def tokenizer_folder(st: Store, row: RunRecord, _hops: int = 0) -> Path | None:
    """The `hf:` folder whose tokenizer the run's model uses; None for byte-level.

    An RL run started from a pretrain run (`policy.init = "run:<ref>"`) uses that run's
    tokenizer, so the reference is followed (a few hops at most)."""
    init = init_of(stored_spec(row)) or ""
    if init.startswith("run:") and _hops < 4:
        try:
            source = st.resolve(init[4:])
        except StoreError:  # deleted since: its tokenizer is unknown, export without one
            return None
        return tokenizer_folder(st, source, _hops + 1)
    folder = hf_folder(init)
    if folder is None:
        return None
    if not folder.is_dir():
        raise ExportError(f"the tokenizer folder {folder} (init = {init!r} of run "
                          f"{row.id}) is gone — restore it, then export again")
    return folder.resolve()


def model_config(ckpt: Path, row: RunRecord) -> GPTConfig:
    """The GPTConfig of the checkpoint's model (see the module docstring for the order)."""
    from workbench.models.config import GPTConfig

    record = read_model_record(ckpt)
    if record is None:
        record = _state_record(ckpt) or _spec_record(row)
    if record.get("arch", "gpt") != "gpt":
        raise ExportError(f"run {row.id} trains a {record['arch']} model; only gpt-arch "
                          "models export to Hugging Face (Llama / Qwen2 / Qwen3 families)")
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in record["config"].items() if k in names})


def _state_record(ckpt: Path) -> dict[str, Any] | None:
    """{"arch": "gpt", "config"} from state.pt's `model_config` (RL checkpoints)."""
    import torch

    try:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False,
                           mmap=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ExportError(f"{ckpt / 'state.pt'}: not readable ({exc}) — export another "
                          "step with --step") from None
    config = state.get("model_config") if isinstance(state, dict) else None
    return {"arch": "gpt", "config": dict(config)} if config else None


def _spec_record(row: RunRecord) -> dict[str, Any]:
    """From the run's spec: pretrain checkpoints written before model.json existed."""
    from workbench.spec import SpecError, parse_spec

    try:
        spec = parse_spec(row.spec or "")
        config = spec.model.build_config()  # type: ignore[attr-defined]
    except (SpecError, AttributeError, ValueError) as exc:
        raise ExportError(f"run {row.id}: its checkpoint has no model.json and its spec "
                          f"does not rebuild the model ({exc})") from None
    from workbench.models.config import GPTConfig

    arch = "gpt" if isinstance(config, GPTConfig) else "recurrent-depth"
    return {"arch": arch, "config": dataclasses.asdict(config)}


def check_out_dir(out: Path, force: bool, keep: list[Path]) -> None:
    """Refuse a destination that is a file, a non-empty folder (without --force), or
    one that holds what the export reads (`keep`: the checkpoint, the tokenizer)."""
    target = out.expanduser().resolve()
    for path in keep:
        path = path.resolve()
        if target == path or target in path.parents:
            raise ExportError(f"{out} holds {path}, which the export reads — pick another "
                              "OUT_DIR")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{out} is a file — pick a folder for OUT_DIR")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty — pick a new OUT_DIR, or pass "
                          "--force to replace it")


# ----------------------------------------------------------------------------- writing


def load_run_model(ckpt: Path, config: GPTConfig) -> GPT:
    """Our GPT with the checkpoint's weights (fp32, CPU): what the export writes, and
    what tests compare transformers' logits against."""
    from safetensors.torch import load_model

    from workbench.models.gpt import GPT

    model = GPT.empty(config)
    load_model(model, str(ckpt / "model.safetensors"), strict=True)
    return model.eval()


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ExportError(f"unknown --dtype {name!r} — use {' or '.join(DTYPES)}")
    return name


def source_context(tokenizer: Path | None) -> int | None:
    """max_position_embeddings of the checkpoint the run started from, if any. A run
    trains on windows of its own seq_len, but RoPE carries the starting checkpoint's
    context: the export keeps it rather than shrinking it to the training window."""
    if tokenizer is None:
        return None
    try:
        value = read_config(tokenizer).get("max_position_embeddings")
    except CheckpointError:
        return None
    return int(value) if isinstance(value, int) else None


def export_model(st: Store, row: RunRecord, out: str | Path, *, step: int | None = None,
                 dtype: str = "float32", force: bool = False) -> Exported:
    """Write the run's checkpoint (latest, or of `step`) to `out` as a Hugging Face
    folder. Everything is checked (torch-free, except an RL checkpoint's config) before
    anything is written."""
    out = Path(out).expanduser()
    check_dtype(dtype)
    ckpt = pick_checkpoint(st, row, step)
    tokenizer = tokenizer_folder(st, row)
    check_out_dir(out, force, [ckpt, *([tokenizer] if tokenizer else [])])
    config = model_config(ckpt, row)

    import torch

    from workbench.models.hf import save_hf

    config.attn_backend = "sdpa"  # any backend loads the same weights; sdpa runs anywhere
    config.seq_len = max(config.seq_len, source_context(tokenizer) or 0)
    model = load_run_model(ckpt, config)
    special = None if tokenizer else BYTE_SPECIALS
    written = save_hf(model, out, tokenizer_from=tokenizer, special=special,
                      dtype=getattr(torch, dtype))
    family = json.loads((written / "config.json").read_text())["model_type"]
    return Exported(out=written, run_id=row.id,
                    step=checkpoint_step(ckpt), family=family, dtype=dtype,
                    files=sorted(p.name for p in written.iterdir()), tokenizer_from=tokenizer)

