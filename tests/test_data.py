"""Tests for workbench.data: tokenizer, sources, split, token cache and batch loader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import corpus
from workbench.data.corpus import (
    BOS,
    EOS,
    PAD,
    VOCAB_SIZE,
    CachedCorpus,
    assign_split,
    build_cache,
    decode,
    encode,
    fingerprint,
    iter_documents,
    list_files,
    path_source,
    resolve_source,
    stdlib_source,
)
from workbench.data.loader import BatchLoader, eval_batches

SMALL_STDLIB = {"max_files": 60, "max_bytes": 600_000}

# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_specials() -> None:
    text = "héllo, wörld ✓\n\x00end"
    tokens = encode(text.encode("utf-8"))
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == list(text.encode("utf-8"))
    assert decode(tokens) == text
    assert np.array_equal(encode(text), tokens)  # str is encoded as UTF-8
    assert (BOS, EOS, PAD) == (256, 257, 258) and VOCAB_SIZE == 260
    with_specials = np.concatenate([[BOS], tokens, [EOS, PAD, PAD]]).astype(np.uint16)
    assert decode(with_specials) == text
    assert decode(torch.tensor([104, 105, EOS])) == "hi"
    assert decode([0xFF, 104]) == "\ufffdh"  # bad UTF-8 is replaced, not raised
    assert decode([]) == ""


# ---------------------------------------------------------------- sources and split


def test_stdlib_source_lists_many_files_sorted_without_site_packages() -> None:
    files = list_files(stdlib_source())
    assert len(files) > 100
    rels = [f.rel for f in files]
    assert rels == sorted(rels)
    assert all(r.endswith(".py") for r in rels)
    assert not any("site-packages" in r.split("/") for r in rels)
    assert "os.py" in rels
    limited = list_files(stdlib_source(**SMALL_STDLIB))
    assert len(limited) <= 60 and sum(f.size for f in limited) <= 600_000
    assert [f.rel for f in limited] == rels[: len(limited)]


def test_stdlib_build_split_is_deterministic(tmp_path: Path) -> None:
    src = stdlib_source(**SMALL_STDLIB, val_permille=100)
    assert fingerprint(src) == fingerprint(stdlib_source(**SMALL_STDLIB, val_permille=100))
    assert fingerprint(src) != fingerprint(stdlib_source(**SMALL_STDLIB, val_permille=50))
    a = build_cache(src, tmp_path / "a")
    b = build_cache(src, tmp_path / "b")
    assert a.fingerprint == b.fingerprint == a.path.name
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)

    docs = {doc_id: data for doc_id, data, _ in iter_documents(src)}
    val_ids = assign_split(list(docs), 100)
    assert val_ids and len(val_ids) < len(docs)
    assert a.meta["documents"] == {"train": len(docs) - len(val_ids), "val": len(val_ids)}
    # the streams are exactly the documents of each side, in order, each followed by EOS
    for split, ids in (("train", [d for d in docs if d not in val_ids]),
                       ("val", [d for d in docs if d in val_ids])):
        expected = np.concatenate([np.append(encode(docs[d]), EOS) for d in ids])
        assert np.array_equal(getattr(a, split), expected)
    assert a.meta["tokens"]["val"] == len(a.val) > 0
    assert a.meta["files"] == len(docs)
    with pytest.raises(ValueError):
        a.train[0] = 1  # read-only memmap


def test_split_rule_is_independent_of_order() -> None:
    ids = [f"dir/file_{i}.txt" for i in range(2000)]
    val = assign_split(ids, 10)
    assert assign_split(list(reversed(ids)), 10) == val
    assert 5 <= len(val) <= 40  # ~1%
    assert val == {d for d in ids if corpus.is_val(d, 10)}
    # small corpora: val gets at least one document, train keeps at least one
    assert len(assign_split(["a.txt", "b.txt"], 10)) == 1
    assert len(assign_split(["a.txt", "b.txt"], 999)) == 1
    assert assign_split(["only.txt"], 999) == set()
    assert assign_split(ids[:3], 0) == set()


def test_user_text_file(tmp_path: Path) -> None:
    lines = [f"line {i} of a user text file\n" for i in range(2000)]
    path = tmp_path / "book.txt"
    path.write_text("".join(lines))
    src = resolve_source(str(path), val_permille=200)
    assert src.kind == "text"
    c = build_cache(src, tmp_path / "cache")
    assert len(c.train) and len(c.val)
    assert len(c.train) + len(c.val) == path.stat().st_size + 1  # one EOS for the file
    text = decode(np.concatenate([c.train, c.val]))
    assert sorted(text.splitlines(keepends=True)) == sorted(lines)  # chunks are line-aligned


def test_user_directory(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.md").write_text("alpha\n")
    (root / "sub" / "b.TXT").write_text("beta\n")
    (root / "sub" / "c.py").write_text("gamma = 1\n")
    (root / "sub" / "d.jsonl").write_text('{"text": "delta"}\n\n{"text": "eps"}\n')
    (root / "skip.bin").write_bytes(b"\x00\x01")
    (root / ".hidden.txt").write_text("hidden")
    (root / ".git" / "x.txt").write_text("git")
    src = path_source(root)
    assert src.kind == "dir"
    assert [f.rel for f in list_files(src)] == ["a.md", "sub/b.TXT", "sub/c.py", "sub/d.jsonl"]
    ids = [d for d, _, _ in iter_documents(src)]
    assert ids == ["a.md", "sub/b.TXT", "sub/c.py", "sub/d.jsonl:1", "sub/d.jsonl:3"]
    c = build_cache(src, tmp_path / "cache")
    together = decode(np.concatenate([c.train, c.val]))
    for word in ("alpha", "beta", "gamma", "delta", "eps"):
        assert word in together
    assert "hidden" not in together and "git" not in together
    assert c.meta["documents"]["val"] >= 1 and c.meta["documents"]["train"] >= 1
    assert int((np.concatenate([c.train, c.val]) == EOS).sum()) == 5


def test_user_jsonl_good_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"body": f"record {i}", "id": i}) for i in range(50)))
    c = build_cache(path_source(good, text_field="body"), tmp_path / "cache")
    together = decode(np.concatenate([c.train, c.val]))
    assert all(f"record {i}" in together for i in range(50))
    assert c.meta["documents"]["train"] + c.meta["documents"]["val"] == 50

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "ok too"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not a JSON line"):
        build_cache(bad, tmp_path / "cache")
    bad.write_text('{"text": "ok"}\n\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: record has no field 'text'"):
        build_cache(bad, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [c.path.name]


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(tmp_path / "nope.txt")


# ---------------------------------------------------------------- cache


def test_cache_reuse_reads_no_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = stdlib_source(max_files=30, max_bytes=300_000)
    seen: list[tuple[int, int]] = []
    first = build_cache(src, tmp_path, progress=lambda done, total: seen.append((done, total)))
    n, size = first.meta["files"], first.meta["bytes"]  # progress counts input bytes
    assert seen[0] == (0, size) and seen[-1] == (size, size) and len(seen) == n + 1
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))

    def forbidden(path: Path) -> bytes:
        raise AssertionError(f"source read on a cache hit: {path}")

    monkeypatch.setattr(corpus, "_read_bytes", forbidden)
    again = build_cache(src, tmp_path, progress=lambda *_: pytest.fail("progress on a hit"))
    assert again.path == first.path
    assert again.meta["created"] == first.meta["created"]
    assert np.array_equal(again.train, first.train)
    assert CachedCorpus.open(first.path).meta == first.meta


def test_changed_input_gives_a_new_cache(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one\n")
    first = build_cache(path, tmp_path / "cache")
    path.write_text("one two\n")
    os.utime(path, ns=(1, 1))
    second = build_cache(path, tmp_path / "cache")
    assert second.fingerprint != first.fingerprint
    assert decode(second.train) == "one two\n"


def test_failed_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = stdlib_source(max_files=10)
    calls = {"n": 0}
    real = corpus._read_bytes

    def flaky(path: Path) -> bytes:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk on fire")
        return real(path)

    monkeypatch.setattr(corpus, "_read_bytes", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        build_cache(src, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the final folder nor a temporary one
    monkeypatch.setattr(corpus, "_read_bytes", real)
    ok = build_cache(src, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [fingerprint(src)] == [ok.path.name]


def test_racing_builds_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that finds the final folder taken when it renames uses the winner's copy."""
    src = stdlib_source(max_files=5)
    winner = build_cache(src, tmp_path / "winner")
    reference = np.array(build_cache(src, tmp_path / "reference").train)
    real_write = corpus._write_cache

    def write_then_lose(tmp: Path, *args: object) -> None:
        real_write(tmp, *args)
        # another process finishes first, between our write and our rename
        os.replace(winner.path, tmp.parent / winner.path.name)

    monkeypatch.setattr(corpus, "_write_cache", write_then_lose)
    got = build_cache(src, tmp_path / "race")
    assert got.path == tmp_path / "race" / winner.fingerprint
    assert [p.name for p in (tmp_path / "race").iterdir()] == [winner.fingerprint]
    assert np.array_equal(got.train, reference)


def test_stale_tmp_of_dead_process_is_removed(tmp_path: Path) -> None:
    import socket
    dead = tmp_path / f".tmp-abc-{2**22 + 12345}-beef-{socket.gethostname()}"
    dead.mkdir(parents=True)
    alive = tmp_path / f".tmp-abc-{os.getpid()}-beef-{socket.gethostname()}"
    alive.mkdir()
    build_cache(stdlib_source(max_files=2), tmp_path)
    assert not dead.exists() and alive.exists()


# ---------------------------------------------------------------- loader


@pytest.fixture
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=5000).astype(np.uint16)


def take(loader: BatchLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                                    for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_loader_shapes_shift_and_determinism(tokens: np.ndarray) -> None:
    loader = BatchLoader(tokens, batch_size=4, seq_len=16, seed=7)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y, strict=True):  # each row is a real window of the corpus
        start = next(i for i in range(len(tokens)) if np.array_equal(tokens[i:i + 16], row_x))
        assert np.array_equal(tokens[start + 1:start + 17], row_y)
    a = take(BatchLoader(tokens, 4, 16, seed=7), 5)
    b = take(BatchLoader(tokens, 4, 16, seed=7), 5)
    c = take(BatchLoader(tokens, 4, 16, seed=8), 5)
    assert same(a, b) and not same(a, c)
    assert not torch.equal(a[0][0], a[1][0])  # consecutive batches differ


def test_loader_state_dict_round_trip(tokens: np.ndarray) -> None:
    loader = BatchLoader(tokens, 3, 8, seed=1)
    take(loader, 3)
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON checkpoint
    expected = take(loader, 4)
    fresh = BatchLoader(tokens, 3, 8, seed=1)
    fresh.load_state_dict(state)
    assert fresh.step == 3 and same(take(fresh, 4), expected)
    with pytest.raises(ValueError, match="seed"):
        BatchLoader(tokens, 3, 8, seed=2).load_state_dict(state)
    other = BatchLoader(tokens, 3, 8, seed=2)
    other.load_state_dict(state, strict=False)
    assert other.step == 3


def test_loader_skip_equals_drawing(tokens: np.ndarray) -> None:
    drawn = BatchLoader(tokens, 2, 8, seed=3)
    take(drawn, 5)
    skipped = BatchLoader(tokens, 2, 8, seed=3)
    skipped.skip(5)
    assert skipped.step == drawn.step == 5
    assert same(take(skipped, 3), take(drawn, 3))
    assert same([skipped.batch(2)], [BatchLoader(tokens, 2, 8, seed=3).batch(2)])
    with pytest.raises(ValueError):
        skipped.skip(-1)


def test_loader_rank_split_matches_single_process(tokens: np.ndarray) -> None:
    world = 4
    single = BatchLoader(tokens, batch_size=8, seq_len=12, seed=5)
    ranks = [BatchLoader(tokens, batch_size=2, seq_len=12, seed=5, rank=r, world_size=world)
             for r in range(world)]
    for k in range(3):
        gx, gy = next(single)
        parts = [next(r) for r in ranks]
        for r, (x, y) in enumerate(parts):
            assert torch.equal(x, gx[r::world]) and torch.equal(y, gy[r::world])
        # all ranks' rows together are exactly the global batch
        cat_x = torch.cat([x for x, _ in parts])
        order = torch.cat([torch.arange(r, 8, world) for r in range(world)])
        assert torch.equal(cat_x, gx[order])
        assert k == single.step - 1
    # a state from the 1-process run resumes the 4-rank run on the same stream
    moved = BatchLoader(tokens, 2, 12, seed=5, rank=1, world_size=world)
    moved.load_state_dict(single.state_dict())
    assert torch.equal(next(moved)[0], next(single)[0][1::world])


def test_loader_refuses_bad_arguments(tokens: np.ndarray) -> None:
    with pytest.raises(ValueError, match="too few"):
        BatchLoader(tokens[:10], 2, 16, seed=0)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(tokens, 2, 16, seed=0, rank=2, world_size=2)
    edge = BatchLoader(tokens[:17], 64, 16, seed=0)  # exactly one possible window
    x, y = next(edge)
    assert torch.equal(x[0], torch.from_numpy(tokens[:16].astype(np.int64)))
    assert torch.equal(y[-1], torch.from_numpy(tokens[1:17].astype(np.int64)))


def test_eval_batches_fixed(tokens: np.ndarray) -> None:
    a = eval_batches(tokens, batch_size=4, seq_len=32, n_batches=3)
    b = eval_batches(tokens, batch_size=4, seq_len=32, n_batches=3)
    assert len(a) == 3 and same(a, b)
    assert a[0][0].shape == (4, 32)
    assert torch.equal(a[0][0][0], torch.from_numpy(tokens[:32].astype(np.int64)))
    assert torch.equal(a[-1][1][-1], torch.from_numpy(tokens[-32:].astype(np.int64)))
    halves = [eval_batches(tokens, 2, 32, 3, rank=r, world_size=2) for r in range(2)]
    for k in range(3):
        assert torch.equal(halves[0][k][0], a[k][0][0::2])
        assert torch.equal(halves[1][k][1], a[k][1][1::2])


def test_loader_on_a_cached_corpus(tmp_path: Path) -> None:
    c = build_cache(stdlib_source(max_files=8), tmp_path)
    x, y = next(BatchLoader(c.train, 2, 64, seed=0))
    assert int(x.max()) < VOCAB_SIZE and x.shape == (2, 64)
    assert len(eval_batches(c.val if len(c.val) > 65 else c.train, 2, 64, 2)) == 2
