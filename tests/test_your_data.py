"""Issue 18: the user's own data. A BPE tokenizer trained here with `tokenizers`, a
Parquet corpus and llm.c `.bin` shards written here, mixtures, and the one-line refusals.
Real `wb launch` runs into a real store; nothing downloads."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import assert_nothing_created, wait_for, wb, wb_inproc
from workbench.data.corpus import CachedCorpus, build_cache, path_source, stdlib_source
from workbench.data.mixture import MixtureLoader
from workbench.data.shards import MAGIC, ShardStream, split_shards, write_shard
from workbench.data.tokenizer import JsonTokenizer
from workbench.recipes.pretrain.data import build_data, tokenize_progress, train_bpe
from workbench.run_record import RunRecord
from workbench.spec import parse_spec
from workbench.store import Store

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MODEL = """
[model]
n_layer = 1
n_head = 2
d_model = 32
seq_len = 32
[optim]
name = "muon"
lr = 3e-3
warmup_steps = 5
[train]
batch_size = 8
eval_every = 50
eval_batches = 2
svd_every = 0
max_logit_every = 50
"""


def documents(n_bytes: int = 400_000) -> list[str]:
    """Real text: the first standard-library sources, as documents."""
    from workbench.data.corpus import iter_documents

    return [raw.decode("utf-8", errors="replace")
            for _, raw, _ in iter_documents(stdlib_source(max_bytes=n_bytes))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A BPE tokenizer.json trained here, and the text as a Parquet file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("corpus")
    docs = documents()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(root / "tokenizer.json"))
    table = pa.table({"id": list(range(len(docs))), "content": docs})
    pq.write_table(table, root / "docs.parquet", row_group_size=16)
    return {"root": root, "tokenizer": root / "tokenizer.json",
            "parquet": root / "docs.parquet"}


def spec_text(body: str, steps: int = 60, extra: str = "") -> str:
    head = f"[train]\nsteps = {steps}{extra}"
    model = MODEL.replace("[train]", head)
    return f'kind = "pretrain"\n{model}\n{body}'


def shards_from(cache: CachedCorpus, folder: Path) -> Path:
    """The cache's tokens as llm.c shards: train in two, val in one named *val*."""
    folder.mkdir(exist_ok=True)
    half = len(cache.train) // 2
    write_shard(folder / "corpus_train_000000.bin", np.asarray(cache.train[:half]))
    write_shard(folder / "corpus_train_000001.bin", np.asarray(cache.train[half:]))
    write_shard(folder / "corpus_val_000000.bin", np.asarray(cache.val))
    return folder


def run_row(store_dir: Path, run_id: str) -> RunRecord:
    with Store(store_dir, create=False) as st:
        return st.get_run(run_id)


# ---------------------------------------------------------------- Parquet + tokenizer


def test_a_parquet_corpus_with_a_bpe_tokenizer_learns(corpus: dict[str, Path], tmp_path: Path,
                                                      store_dir: Path) -> None:
    spec = tmp_path / "parquet.toml"
    spec.write_text(spec_text(f'[data]\npath = "{corpus["parquet"]}"\ntext_field = "content"\n'
                              f'tokenizer = "{corpus["tokenizer"]}"\nval_permille = 100\n'))
    proc = wb("launch", str(spec), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pretrain: tokenizing" in proc.stdout and "MB/s" in proc.stdout
    with Store(store_dir, create=False) as st:
        (row,) = st.runs()
        loss = [v for *_, v, _ in st.scalars(row.id, "train/loss")]
        bpb = [v for *_, v, _ in st.scalars(row.id, "val/bits_per_byte")]
        config = st.get_run(row.id).config
        stages = [e.payload for e in st.events(row.id, kind="stage")]
    tokenizing = [p for p in stages if p["stage"] == "tokenizing"]
    assert tokenizing[0]["done"] == 0 and tokenizing[-1]["done"] == tokenizing[-1]["total"] > 0
    assert row.status == "finished"
    assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.5  # it learns (ln 600 = 6.4 at start)
    assert config["tokenizer"]["name"] == str(corpus["tokenizer"].resolve())
    assert config["tokenizer"]["vocab_size"] == 600
    assert bpb and 0 < bpb[-1] < 8  # comparable across tokenizers: bits per UTF-8 byte


def test_the_same_tokens_as_bin_shards_give_the_same_batches(corpus: dict[str, Path],
                                                             tmp_path: Path) -> None:
    parquet = parse_spec(spec_text(
        f'[data]\npath = "{corpus["parquet"]}"\ntext_field = "content"\n'
        f'tokenizer = "{corpus["tokenizer"]}"\nval_permille = 100\n'))
    tok = JsonTokenizer(corpus["tokenizer"])
    a = build_data(parquet, tmp_path / "cache", tok)  # type: ignore[arg-type]
    folder = shards_from(CachedCorpus.open(a.sources[0].where), tmp_path / "shards")
    shards = parse_spec(spec_text(f'[data]\npath = "{folder}/corpus_*.bin"\n'
                                  f'tokenizer = "{corpus["tokenizer"]}"\n'))
    b = build_data(shards, tmp_path / "unused", tok)  # type: ignore[arg-type]
    assert not (tmp_path / "unused").exists()  # shards are read in place, never cached
    assert isinstance(b.sources[0].train, ShardStream)
    la, lb = a.loader(8, 32, 0, 0, 1), b.loader(8, 32, 0, 0, 1)
    for k in range(50):
        xa, ya = la.batch(k)
        xb, yb = lb.batch(k)
        assert torch.equal(xa, xb) and torch.equal(ya, yb), k
    va = a.eval([a.sources[0].val], 8, 32, 3, 0, 1)
    vb = b.eval([b.sources[0].val], 8, 32, 3, 0, 1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(va, vb, strict=True))
    # A window that straddles two shards reads across the seam.
    stream = b.sources[0].train
    seam = int(stream.offsets[1])
    assert stream[np.arange(seam - 3, seam + 3)].tolist() == \
        np.asarray(a.sources[0].train[seam - 3:seam + 3]).tolist()


def test_shards_split_by_name_or_by_val_path(tmp_path: Path) -> None:
    for name in ("a_train_0.bin", "a_train_1.bin", "a_val_0.bin", "held.bin"):
        write_shard(tmp_path / name, np.arange(100) % 7)
    split = split_shards(tmp_path / "a_*.bin")
    assert [p.name for p in split.train] == ["a_train_0.bin", "a_train_1.bin"]
    assert [p.name for p in split.val] == ["a_val_0.bin"]
    split = split_shards(tmp_path / "a_train_*.bin", str(tmp_path / "held.bin"))
    assert [p.name for p in split.val] == ["held.bin"] and len(split.train) == 2


# ---------------------------------------------------------------- mixtures


def test_mixture_fractions_follow_the_weights() -> None:
    a, b = np.arange(10_000) % 50, np.arange(5_000) % 30 + 100
    loader = MixtureLoader([a, b], [3, 1], ["a", "b"], batch_size=16, seq_len=32, seed=1)
    frac = loader.fractions(0, 500)
    assert abs(frac["a"] - 0.75) < 0.02 and abs(frac["b"] - 0.25) < 0.02
    x, _ = loader.batch(7)
    which, _ = loader.global_rows(7)
    assert ((x[torch.from_numpy(which == 1)] >= 100).all()
            and (x[torch.from_numpy(which == 0)] < 100).all())
    # Two ranks together see one rank's batch.
    r0 = MixtureLoader([a, b], [3, 1], ["a", "b"], 8, 32, 1, rank=0, world_size=2).batch(7)[0]
    r1 = MixtureLoader([a, b], [3, 1], ["a", "b"], 8, 32, 1, rank=1, world_size=2).batch(7)[0]
    assert torch.equal(torch.stack([r0, r1], 1).reshape(16, 32), x)


def test_a_mixture_logs_its_fractions_and_resumes_exactly_after_kill_9(
        corpus: dict[str, Path], tmp_path: Path, store_dir: Path) -> None:
    tok = JsonTokenizer(corpus["tokenizer"])
    text = parse_spec(spec_text(f'[data]\npath = "{corpus["parquet"]}"\ntext_field = '
                                f'"content"\ntokenizer = "{corpus["tokenizer"]}"\n'))
    cache = CachedCorpus.open(build_data(text, tmp_path / "c", tok).sources[0].where)  # type: ignore[arg-type]
    folder = shards_from(cache, tmp_path / "shards")
    body = (f'[data]\ntokenizer = "{corpus["tokenizer"]}"\ntext_field = "content"\n'
            f'[[data.sources]]\npath = "{corpus["parquet"]}"\nweight = 3\nname = "web"\n'
            f'[[data.sources]]\npath = "{folder}/*.bin"\nweight = 1\nname = "code"\n')
    spec = tmp_path / "mix.toml"
    spec.write_text(spec_text(body, steps=500, extra="\ncheckpoint_every = 100"))
    whole = wb("launch", str(spec), timeout=900)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    with Store(store_dir, create=False) as st:
        (ref,) = st.runs()
        ref_loss = {s: v for _, s, _, v, _ in st.scalars(ref.id, "train/loss")}
        web = [v for *_, v, _ in st.scalars(ref.id, "train/source_frac/web")]
        code = [v for *_, v, _ in st.scalars(ref.id, "train/source_frac/code")]
    assert len(web) == 500 and abs(np.mean(web) - 0.75) < 0.02
    assert abs(np.mean(code) - 0.25) < 0.02

    run_id = wb("launch", str(spec), "--detach", check=True, timeout=60).stdout.strip()

    def past_checkpoint() -> bool:
        with Store(store_dir, create=False) as st:
            saved = [e.step for e in st.events(run_id, kind="checkpoint")]
            return bool(saved) and (st.get_run(run_id).last_step or 0) >= saved[-1] + 20
    wait_for(past_checkpoint, 300, "a checkpoint and 20 more steps")
    os.killpg(run_row(store_dir, run_id).pid, signal.SIGKILL)
    wait_for(lambda: run_row(store_dir, run_id).status in ("lost", "failed"), 60,
             "the run to be marked lost")
    new_id = wb("resume", run_id, "--detach", check=True, timeout=60).stdout.strip()
    wait_for(lambda: run_row(store_dir, new_id).status not in ("running", "starting",
                                                                  "queued"),
             600, "the resumed run to end")
    assert run_row(store_dir, new_id).status == "finished"
    with Store(store_dir, create=False) as st:
        resumed = {s: v for _, s, _, v, _ in st.scalars(new_id, "train/loss")}
    assert max(resumed) == 500 and min(resumed) > 100
    for s, v in resumed.items():
        assert v == pytest.approx(ref_loss[s], rel=1e-5, abs=1e-6), s


# ---------------------------------------------------------------- vocabularies, progress


def test_a_tokenizer_json_over_65535_ids_caches_as_uint32(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"<|endoftext|>": 70_000, "[UNK]": 70_001}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    jt = JsonTokenizer(tmp_path / "tokenizer.json")
    assert jt.vocab_size == 70_002 and jt.eos_id == 70_000
    words = " ".join(f"w{i}" for i in range(0, 70_000, 997))
    (tmp_path / "a.txt").write_text(words)
    c = build_cache(path_source(tmp_path / "a.txt"), tmp_path / "c", tokenizer=jt)
    assert c.meta["dtype"] == "uint32" and c.train.dtype == np.dtype("<u4")
    ids = np.concatenate([c.train, c.val]).tolist()
    assert ids[-1] == 70_000 and max(ids[:-1]) == 69_790
    assert jt.decode(ids) == words


def test_tokenizing_shows_rate_and_time_left() -> None:
    lines: list[str] = []
    progress = tokenize_progress(lines.append, "tok", every_s=0)
    for done in (0, 1_000_000, 3_000_000, 4_000_000):
        progress(done, 4_000_000)
    assert lines[0] == "pretrain: tokenizing 4.0 MB with tok"
    assert "25.0%" in lines[1] and "MB/s" in lines[1] and "ETA" in lines[1]
    assert "100.0%" in lines[-1] and "done in" in lines[-1]


def test_a_bpe_tokenizer_is_trained_once(tmp_path: Path) -> None:
    spec = parse_spec(spec_text('[data]\nmax_bytes = 200000\ntokenizer = "bpe:600"\n'))
    said: list[str] = []
    path = train_bpe(spec.data, 600, tmp_path, said.append)  # type: ignore[attr-defined]
    assert JsonTokenizer(path).vocab_size == 600 and len(said) == 2
    again = train_bpe(spec.data, 600, tmp_path, said.append)  # type: ignore[attr-defined]
    assert again == path and len(said) == 2  # cached: no second training
    assert spec.model.build_config().vocab_size == 640  # padded to a multiple of 64


def test_the_builtin_bpe_spec_is_valid() -> None:
    from workbench.spec import load_spec

    spec = load_spec("pretrain-bpe-tiny").spec
    assert spec.data.tokenizer == "bpe:4096"  # type: ignore[attr-defined]
    assert spec.model.build_config().vocab_size == 4096  # type: ignore[attr-defined]


# ---------------------------------------------------------------- refusals


def _bad_shards(tmp_path: Path, kind: str) -> str:
    folder = tmp_path / "bad"
    folder.mkdir()
    write_shard(folder / "x_val_0.bin", np.arange(100))
    path = write_shard(folder / "x_train_0.bin", np.arange(1000) % 500)
    raw = bytearray(path.read_bytes())
    if kind == "magic":
        raw[:4] = np.int32(MAGIC + 1).tobytes()
    elif kind == "version":
        raw[4:8] = np.int32(7).tobytes()
    else:
        raw = raw[:-10]
    path.write_bytes(bytes(raw))
    return f'path = "{folder}/*.bin"\ntokenizer = "gpt2-bin"'


def _too_big(tmp_path: Path, corpus: dict[str, Path]) -> str:
    from workbench.models.example import write_example_model

    folder = write_example_model(tmp_path / "model", d_model=32, n_layer=1, seq_len=64)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    from tokenizers import Tokenizer, models

    words = {f"w{i}": i for i in range(vocab + 100)} | {"<|endoftext|>": vocab + 100}
    Tokenizer(models.WordLevel(words, unk_token="w0")).save(str(tmp_path / "big.json"))
    return f'tokenizer = "{tmp_path / "big.json"}"\n[model]\ninit = "hf:{folder}"\nseq_len = 64'


REFUSALS = {
    "magic": ("x_train_0.bin: magic 20240521, expected 20240520", None),
    "version": ("x_train_0.bin: version 7, expected 1", None),
    "truncated": ("x_train_0.bin: the header says 1,000 tokens", None),
    "column": ("docs.parquet: no column 'body' (columns: id, content)", None),
    "tokenizer": ("data.tokenizer: tokenizer", "no such file or folder"),
    "too_big": ("more than the embedding of model.init", None),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_data_is_refused_in_one_line_with_nothing_created(
        case: str, corpus: dict[str, Path], tmp_path: Path, store_dir: Path) -> None:
    if case in ("magic", "version", "truncated"):
        data = _bad_shards(tmp_path, case)
    elif case == "column":
        data = f'path = "{corpus["parquet"]}"\ntext_field = "body"'
    elif case == "tokenizer":
        data = f'tokenizer = "{tmp_path / "nope.json"}"'
    else:
        data = _too_big(tmp_path, corpus)
    text = f'kind = "pretrain"\n[train]\nsteps = 5\n[data]\n{data}\n'
    if "[model]" not in data:
        text += MODEL.split("[optim]")[0]
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    proc = wb_inproc("launch", str(spec), "--detach")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in REFUSALS[case]:
        assert fragment is None or fragment in lines[0], lines[0]
    assert proc.stdout == ""
    assert_nothing_created(store_dir)


def test_bench_data_runs_and_prints_its_figures() -> None:
    from workbench.bench.data import bench_data

    out = bench_data(quick=True)
    tok, loader = out["tokenize"], out["loader"]
    assert tok["throughput_ratio"] == pytest.approx(tok["direct_s"] / tok["cache_s"], abs=2e-2)
    assert tok["tokens"] > 0 and tok["bytes_per_token"] > 1  # BPE merges bytes
    assert loader["loader_over_step"] == pytest.approx(
        loader["loader_ms"] / loader["step_ms"], rel=0.05, abs=1e-4)
    assert "bpe_vs_bytes" not in out  # whole runs: full mode only


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
