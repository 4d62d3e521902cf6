"""`wb export-model`: a run's checkpoint as a Hugging Face folder that transformers loads
with the same logits as our model from the same checkpoint, the tokenizer files it came
with, and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_model

from tests.helpers import wb_inproc
from tests.hf_helpers import bytes_spec, checkpoint, cpt_spec, run_inline
from workbench.data.tokenizer import HFTokenizer
from workbench.export_model import export_model, load_run_model, model_config
from workbench.models.config import GPTConfig
from workbench.models.example import write_example_model
from workbench.models.gpt import GPT
from workbench.run_record import RunRecord
from workbench.store import Store

transformers = pytest.importorskip("transformers")

TEXT = "def add(a, b):\n    return a + b  # two numbers\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store for the module (the autouse fixture's WB_STORE is per test)."""
    st = Store(tmp_path_factory.mktemp("export") / "store")
    yield st
    st.close()


@pytest.fixture(scope="module")
def train(store: Store, tmp_path_factory: pytest.TempPathFactory,
          ) -> Callable[[str], dict[str, Any]]:
    """family -> two muon steps from a tiny checkpoint of that family, a checkpoint after
    each (trained once per module)."""
    done: dict[str, dict[str, Any]] = {}

    def get(family: str) -> dict[str, Any]:
        if family not in done:
            folder = write_example_model(tmp_path_factory.mktemp(family) / family, family)
            row = run_inline(store, cpt_spec(f"hf:{folder}", steps=2, ckpt=1))
            assert row.status == "finished"
            done[family] = {"row": row, "folder": folder, "family": family}
        return done[family]

    return get


@pytest.fixture(params=["qwen2", "llama"])
def trained(request: pytest.FixtureRequest, train: Callable[[str], dict[str, Any]],
            ) -> dict[str, Any]:
    """qwen2: tied head and q/k/v biases; llama: untied head."""
    return train(request.param)


@pytest.fixture
def qwen2_run(train: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    return train("qwen2")


def our_logits(ckpt: Path, row: RunRecord, ids: torch.Tensor) -> torch.Tensor:
    config = model_config(ckpt, row)
    config.attn_backend = "sdpa"
    with torch.no_grad():
        return load_run_model(ckpt, config)(ids).logits


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(ids).logits.float()


def wb_export(store: Store, *args: str) -> Any:
    return wb_inproc("export-model", *args, "--store", str(store.root))


# ----------------------------------------------------------------------------- round trip


def test_export_round_trip_matches_our_model(trained: dict[str, Any], store: Store,
                                             tmp_path: Path) -> None:
    row, family = trained["row"], trained["family"]
    out = tmp_path / "out"
    proc = wb_export(store, row.id, str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}: ") and f"({family}, float32, step 2 " in lines[0]
    assert "from_pretrained" in lines[1]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    assert config["max_position_embeddings"] == 512  # the checkpoint's, not seq_len 32

    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = torch.tensor([tok.encode(TEXT)])
    assert ids.tolist()[0] == HFTokenizer(trained["folder"]).encode(TEXT)
    ours = our_logits(checkpoint(store, row.id, 2), row, ids)
    theirs = hf_logits(out, ids)
    assert (ours - theirs).abs().max() < 1e-5
    before = hf_logits(trained["folder"], ids)  # the checkpoint it started from
    assert (before - theirs).abs().max() > 1e-4  # trained weights, not the starting ones


def test_export_of_an_earlier_step_in_bfloat16(trained: dict[str, Any], store: Store,
                                               tmp_path: Path) -> None:
    row = trained["row"]
    done = export_model(store, row, tmp_path / "bf16", step=1, dtype="bfloat16")
    assert done.step == 1 and done.dtype == "bfloat16"
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == \
        "bfloat16"
    ids = torch.tensor([HFTokenizer(trained["folder"]).encode(TEXT)])
    ours = our_logits(checkpoint(store, row.id, 1), row, ids)
    assert (ours - hf_logits(tmp_path / "bf16", ids)).abs().max() < 0.1  # bf16 weights


def test_a_byte_level_run_exports_without_tokenizer_files(store: Store, tmp_path: Path) -> None:
    row = run_inline(store, bytes_spec(steps=2, ckpt=2))
    out = tmp_path / "bytes"
    proc = wb_export(store, row.id, str(out))
    assert proc.returncode == 0, proc.stderr
    assert "no Hugging Face tokenizer files" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"], config["eos_token_id"]) == \
        ("llama", 260, 257)
    ids = torch.tensor([list(TEXT.encode())[:32]])  # the run's seq_len
    ours = our_logits(checkpoint(store, row.id, 2), row, ids)
    assert (ours - hf_logits(out, ids)).abs().max() < 1e-5

    # A checkpoint from before model.json: the config comes from the run's spec.
    (checkpoint(store, row.id, 2) / "model.json").unlink()
    export_model(store, row, tmp_path / "old")
    assert json.loads((tmp_path / "old" / "config.json").read_text()) == config


def fake_rl_run(store: Store, init: str, config: GPTConfig, version: int = 4,
                ) -> tuple[RunRecord, GPT]:
    """An RL run row and a checkpoint in the layout of recipes/rl/trainer.py `save`:
    model.safetensors, and state.pt whose `model_config` is vars(GPTConfig)."""
    torch.manual_seed(version)
    model = GPT(config)
    spec = f'kind = "rl"\n[policy]\ninit = "{init}"\n'
    row = store.create_run(kind="rl", base="rl", status="finished", spec=spec, config={})
    ckpt = checkpoint(store, row.id, version)
    ckpt.mkdir(parents=True)
    save_model(model, str(ckpt / "model.safetensors"))
    torch.save({"version": version, "optimizer": {}, "model_config": vars(config)},
               ckpt / "state.pt")
    return row, model


def test_an_rl_checkpoint_exports_with_its_policy_tokenizer(qwen2_run: dict[str, Any],
                                                           store: Store, tmp_path: Path) -> None:
    """`policy.init = "hf:<folder>"`: the tokenizer comes from that folder."""
    trained = qwen2_run
    config = model_config(checkpoint(store, trained["row"].id, 2), trained["row"])
    config.attn_backend = "sdpa"
    row, model = fake_rl_run(store, f"hf:{trained['folder']}", config)
    done = export_model(store, row, tmp_path / "rl")
    assert done.tokenizer_from == trained["folder"].resolve() and done.step == 4
    assert (tmp_path / "rl" / "tokenizer.json").is_file()
    ids = torch.tensor([HFTokenizer(trained["folder"]).encode(TEXT)])
    with torch.no_grad():
        ours = model.eval()(ids).logits
    assert (ours - hf_logits(tmp_path / "rl", ids)).abs().max() < 1e-5


@pytest.mark.slow
def test_a_real_rl_run_exports(store: Store, tmp_path: Path) -> None:
    """A tiny byte-level RL run (real generator, verifier and trainer processes)."""
    from workbench.launch import local
    from workbench.procs import kill_tree
    from workbench.spec import LoadedSpec, parse_spec

    spec = """
kind = "rl"
seed = 1
[policy]
init = "random"
n_layer = 1
d_model = 64
seq_len = 128
[rollout]
generators = 1
slots = 4
l_max = 24
l_cache = 8
[grpo]
steps = 2
group_size = 4
groups_per_step = 1
checkpoint_every = 2
[verifier]
procs = 1
timeout_s = 5
"""
    launched = local.start(store, LoadedSpec(parse_spec(spec), "rl.toml"))
    row, proc = launched.record, launched.process
    assert proc is not None
    try:
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            kill_tree(row.pid)
    assert store.get_run(row.id).status == "finished"
    row = store.get_run(row.id)
    done = export_model(store, row, tmp_path / "rl")
    assert done.step == 2 and done.tokenizer_from is None
    ids = torch.tensor([list(b"1 + 2 = ")])
    ours = our_logits(checkpoint(store, row.id, 2), row, ids)
    assert (ours - hf_logits(tmp_path / "rl", ids)).abs().max() < 1e-5


# ----------------------------------------------------------------------------- refusals


def one_error(proc: Any) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


def nothing_written(parent: Path) -> None:
    assert not [p for p in parent.iterdir() if p.name.startswith(".tmp-")]


def test_bad_input_is_refused_and_nothing_is_written(qwen2_run: dict[str, Any], store: Store,
                                                     tmp_path: Path) -> None:
    trained = qwen2_run
    run_id = trained["row"].id
    out = tmp_path / "out"
    assert "no run 'nope'" in one_error(wb_export(store, "nope", str(out)))
    assert "has no checkpoint of step 7 — it has steps 1, 2" in one_error(
        wb_export(store, run_id, str(out), "--step", "7"))
    assert "unknown --dtype 'fp8'" in one_error(
        wb_export(store, run_id, str(out), "--dtype", "fp8"))
    assert not out.exists()

    empty = store.create_run(kind="pretrain", base="empty", status="running",
                             spec=cpt_spec(f"hf:{trained['folder']}"), config={})
    assert "has no checkpoint yet" in one_error(wb_export(store, empty.id, str(out)))
    script = store.create_run(kind="script", base="script", status="finished", config={})
    assert "is a script run" in one_error(wb_export(store, script.id, str(out)))

    depth = store.create_run(kind="pretrain", base="rd", status="finished", config={},
                             spec='kind = "pretrain"\n[model]\narch = "recurrent-depth"\n')
    ckpt = checkpoint(store, depth.id, 1)
    ckpt.mkdir(parents=True)
    for name in ("state.pt", "model.safetensors"):
        (ckpt / name).write_bytes(b"")
    (ckpt / "model.json").write_text(json.dumps({"arch": "recurrent-depth", "config": {}}))
    assert "only gpt-arch models export" in one_error(wb_export(store, depth.id, str(out)))
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "exists and is not empty" in one_error(wb_export(store, run_id, str(out)))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_error(wb_export(store, run_id, str(tmp_path / "file")))
    assert "which the export reads" in one_error(
        wb_export(store, run_id, str(trained["folder"]), "--force"))
    nothing_written(tmp_path)
    nothing_written(trained["folder"].parent)

    moved = trained["folder"].with_name("moved")
    shutil.move(trained["folder"], moved)
    try:
        assert "is gone — restore it" in one_error(wb_export(store, run_id, str(out)))
    finally:
        shutil.move(moved, trained["folder"])
    assert (out / "keep.txt").read_text() == "mine"

    proc = wb_export(store, run_id, str(out), "--force")  # --force replaces it
    assert proc.returncode == 0, proc.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
