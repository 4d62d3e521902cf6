"""Continued pretraining from a Hugging Face checkpoint (`model.init = "hf:<folder>"`):
spec refusals through the real `wb launch`, a real muonclip run on a tiny Qwen2
checkpoint, the token cache keyed by the tokenizer, checkpoints that record the model,
and a resume that continues from its checkpoint rather than the checkpoint folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.helpers import assert_nothing_created, wb, wb_inproc
from tests.hf_helpers import checkpoint, cpt_spec, losses, run_inline
from workbench.data.corpus import (
    CACHE_FORMAT,
    CHUNK_BYTES,
    EOS,
    TOKENIZER,
    TOKENIZER_VERSION,
    CachedCorpus,
    build_cache,
    encode,
    fingerprint,
    list_files,
    path_source,
    stdlib_source,
)
from workbench.data.tokenizer import ByteTokenizer, HFTokenizer
from workbench.models.example import build_tokenizer, write_example_model
from workbench.spec import parse_spec
from workbench.store import Store

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real Qwen2 checkpoint with its BPE tokenizer (vocab 1024, 512 positions)."""
    return write_example_model(tmp_path_factory.mktemp("ckpt") / "qwen2", "qwen2")


@pytest.fixture(scope="module")
def cpt(tmp_path_factory: pytest.TempPathFactory, qwen2: Path) -> Iterator[dict[str, Any]]:
    """`wb launch cpt.toml` in the foreground: 3 muonclip steps from the Qwen2 folder,
    named by a relative path (the launch pins it), checkpoints at steps 2 and 3."""
    root = tmp_path_factory.mktemp("cpt")
    shutil.copytree(qwen2, root / "qwen2")
    (root / "cpt.toml").write_text(cpt_spec("hf:qwen2", opt="muonclip", steps=3, ckpt=2))
    store_dir = root / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        proc = wb("launch", "cpt.toml", "--store", str(store_dir), timeout=300,
                  env={"WB_STORE": str(store_dir)})
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    st = Store(store_dir, create=False)
    (row,) = st.runs()
    yield {"store": st, "row": row, "folder": (root / "qwen2").resolve(),
           "stdout": (st.run_dir(row.id) / "stdout.log").read_text()}
    st.close()


# ----------------------------------------------------------------------------- spec


def _gpt2_folder(root: Path) -> Path:
    folder = root / "gpt2"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return folder


REFUSALS = [
    (["model.init=hf:no/such/folder"], "model.init: no/such/folder: no such checkpoint folder"),
    (["model.init=hf:@empty"], "no config.json"),
    (["model.init=hf:@gpt2"], "model_type 'gpt2' is not supported — supported: llama, qwen2, "
     "qwen3"),
    (["model.init=hf:@qwen2", "model.seq_len=1024"],
     "model.seq_len: seq_len 1024 exceeds the checkpoint's max_position_embeddings (512)"),
    (["model.init=hf:@qwen2", "model.d_model=256"], "model.d_model is fixed by the checkpoint"),
    (["model.init=hf:@qwen2", "model.arch=recurrent-depth"], "arch 'recurrent-depth' cannot "
     "start from one"),
    (["model.init=qwen2"], "model.init: use 'scratch' or 'hf:<folder>'"),
]


@pytest.mark.parametrize(("sets", "fragment"), REFUSALS)
def test_wb_launch_refuses_a_bad_checkpoint_in_one_line(
        tmp_path: Path, store_dir: Path, qwen2: Path, sets: list[str], fragment: str) -> None:
    (tmp_path / "empty").mkdir()
    folders = {"@empty": tmp_path / "empty", "@gpt2": _gpt2_folder(tmp_path), "@qwen2": qwen2}
    args: list[str] = []
    for item in sets:
        for alias, folder in folders.items():
            item = item.replace(alias, str(folder))
        args += ["--set", item]
    proc = wb_inproc("launch", "muon-tiny", *args, "--detach")
    if proc.returncode == 0:  # accepted by mistake: end the run before failing
        with Store(store_dir, create=False) as st:
            for r in st.runs():
                os.killpg(r.pid, signal.SIGKILL)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0]
    assert proc.stdout == ""
    assert_nothing_created(store_dir)


def test_for_launch_pins_the_checkpoint_folder(tmp_path: Path, qwen2: Path) -> None:
    shutil.copytree(qwen2, tmp_path / "ck")
    spec = parse_spec(cpt_spec("hf:ck"))
    assert spec.model.init == "hf:ck"
    assert spec.for_launch().model.init == f"hf:{(tmp_path / 'ck').resolve()}"
    config = spec.model.build_config()
    assert (config.family, config.vocab_size, config.seq_len) == ("qwen2", 1024, 32)
    assert parse_spec(cpt_spec("hf:ck")).model.gpt_config() == config  # RL's run: init


# ----------------------------------------------------------------------------- a real run


def test_a_real_run_trains_the_checkpoint_with_muonclip(cpt: dict[str, Any]) -> None:
    st, row, folder = cpt["store"], cpt["row"], cpt["folder"]
    assert row.status == "finished"
    assert sorted(losses(st, row.id)) == [1, 2, 3]
    assert all(4 < v < 9 for v in losses(st, row.id).values())  # about ln(1024) = 6.9
    keys = {k for _, _, k, _, _ in st.scalars(row.id)}
    assert {"val/loss", "attn/max_logit", "qkclip/clipped_heads"} <= keys
    matrices = [r for r in st.records(row.id, keys=["attn/max_logit_heads"])
                if r.type == "matrix"]
    assert [m.step for m in matrices] == [1, 2, 3]
    assert all(m.shape == (2, 4) for m in matrices)  # the checkpoint's 2 layers x 4 heads
    config = row.config
    assert config["model_init"] == f"hf:{folder}"  # pinned to an absolute path at launch
    tok = config["tokenizer"]
    assert tok["fingerprint"] == HFTokenizer(folder).fingerprint()
    assert (tok["vocab_size"], tok["eos"]) == (1024, HFTokenizer(folder).eos_id)
    assert "tokenizing" in cpt["stdout"]


def test_the_cache_is_keyed_by_the_tokenizer(cpt: dict[str, Any], tmp_path: Path) -> None:
    st, folder = cpt["store"], cpt["folder"]
    (cache,) = [p for p in (st.root / "cache" / "data").iterdir() if not p.name.startswith(".")]
    meta = json.loads((cache / "meta.json").read_text())
    tok = HFTokenizer(folder)
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint()
    assert meta["dtype"] == meta["tokenizer"]["dtype"] == "uint16"
    corpus = CachedCorpus.open(cache)
    eos_count = int((corpus.train == tok.eos_id).sum() + (corpus.val == tok.eos_id).sum())
    assert eos_count == sum(meta["documents"].values())  # one EOS after each document

    # The same source with another tokenizer, or with bytes, is another cache.
    build_tokenizer(tmp_path / "tok2", vocab_size=400, max_bytes=100_000)
    source = stdlib_source(max_bytes=20_000)
    mine = build_cache(source, tmp_path / "c", tokenizer=tok)
    other = build_cache(source, tmp_path / "c", tokenizer=HFTokenizer(tmp_path / "tok2"))
    plain = build_cache(source, tmp_path / "c")
    assert len({mine.fingerprint, other.fingerprint, plain.fingerprint}) == 3
    assert mine.fingerprint == meta["fingerprint"] == cache.name  # the run's cache, again
    assert len(other.train) > len(mine.train)  # a smaller vocabulary: more tokens
    assert plain.meta["tokenizer"]["name"] == "bytes" and plain.meta["dtype"] == "uint16"


class WideTokenizer:
    """A stand-in with 70,000 ids: its caches must be uint32."""

    name = "wide"
    vocab_size = 70_000
    eos_id = 69_999
    bos_id = None
    stop_ids = [69_999]

    def fingerprint(self) -> str:
        return "wide-1"

    def encode(self, text: str) -> list[int]:
        return [65_536 + b for b in text.encode()]


def test_a_vocabulary_over_65536_ids_is_cached_as_uint32(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("héllo\n" * 100)
    c = build_cache(path_source(tmp_path / "a.txt"), tmp_path / "c", tokenizer=WideTokenizer())
    assert c.meta["dtype"] == "uint32" and c.train.dtype == np.dtype("<u4")
    again = CachedCorpus.open(c.path)
    expected = [65_536 + b for b in ("héllo\n" * 100).encode()] + [69_999]
    assert np.concatenate([again.train, again.val]).tolist() == expected


def test_the_byte_cache_is_unchanged(tmp_path: Path) -> None:
    """Same fingerprint formula as before tokenizers could be chosen (existing caches stay
    valid), with or without the bytes tokenizer passed, and the same uint16 stream."""
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.txt").write_text(f"doc {i} é\n" * 500)
    src = path_source(tmp_path / "d")
    key = {"format": CACHE_FORMAT, "tokenizer": [TOKENIZER, TOKENIZER_VERSION],
           "chunk_bytes": CHUNK_BYTES, "source": asdict(src),
           "files": [[f.rel, f.size, f.mtime_ns] for f in list_files(src)]}
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    expected = hashlib.sha256(blob).hexdigest()[:16]
    assert fingerprint(src) == fingerprint(src, tokenizer=ByteTokenizer()) == expected
    c = build_cache(src, tmp_path / "c", tokenizer=ByteTokenizer())
    assert c.path.name == expected and c.train.dtype == np.dtype("<u2")
    stream = np.concatenate([c.train, c.val]).tolist()
    assert sorted(stream) == sorted(
        np.concatenate([np.append(encode((tmp_path / "d" / f"{i}.txt").read_bytes()), EOS)
                        for i in range(3)]).tolist())


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_record_the_model_and_hold_trained_weights(cpt: dict[str, Any]) -> None:
    st, row, folder = cpt["store"], cpt["row"], cpt["folder"]
    for step in (2, 3):
        record = json.loads((checkpoint(st, row.id, step) / "model.json").read_text())
        assert record["arch"] == "gpt"
        c = record["config"]
        assert (c["family"], c["vocab_size"], c["qkv_bias"], c["tie_embeddings"]) == \
            ("qwen2", 1024, True, True)
    ours = load_file(checkpoint(st, row.id, 3) / "model.safetensors")
    start = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in ours or "embed.weight" not in ours  # tied: stored once
    q = "blocks.0.attn.q_proj.weight"
    assert not np.allclose(ours[q].numpy(), start["model.layers.0.self_attn.q_proj.weight"])


def test_resume_continues_from_its_checkpoint_not_the_checkpoint_folder(
        cpt: dict[str, Any], tmp_path: Path) -> None:
    """A run resumed from step 2 reproduces step 3 of the run it resumes, bit for bit: had
    the folder's weights been loaded over the checkpoint, step 3 would differ."""
    st, row = cpt["store"], cpt["row"]
    previous = tmp_path / "previous"
    shutil.copytree(checkpoint(st, row.id, 2), previous / "checkpoints" / "step-00000002")
    resumed = run_inline(st, row.spec or "", resume_dir=previous)
    assert losses(st, resumed.id) == {3: losses(st, row.id)[3]}
    (event,) = [e for e in st.events(resumed.id, kind="checkpoint")
                if e.payload.get("action") == "resumed"]
    assert event.step == 2
