"""The pretrain recipe's data: the tokenizer, the corpora and their loaders.

`check_data` (data_spec.py, with the `[data]` section it checks; re-exported here) runs
when the spec is validated, before any run row exists. `build_tokenizer` and `build_data`
run in the worker: they train `bpe:<vocab>` tokenizers and tokenize text corpora into
the store's cache once (data/corpus.py), and memory-map `.bin` shards in place
(data/shards.py). `TrainData.loader` is a BatchLoader for one source and a
MixtureLoader for `[[data.sources]]` (data/mixture.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.data.corpus import fingerprint, is_val, iter_documents, resolve_source
from workbench.data.shards import is_shard_path, split_shards
from workbench.data.tokenizer import AnyTokenizer, ByteTokenizer, JsonTokenizer, load_tokenizer

# The spec-time checks live with the data section (data_spec.py); re-exported here.
from workbench.recipes.pretrain.data_spec import DataSection, SourceSection, bpe_vocab
from workbench.recipes.pretrain.data_spec import check_data as check_data

if TYPE_CHECKING:
    import torch

    from workbench.data.loader import StepLoader
    from workbench.recipes.pretrain.spec import PretrainSpec

BPE_VERSION = 1
EOT = "<|endoftext|>"
PROGRESS_EVERY_S = 2.0


# ---------------------------------------------------------------- tokenizer (worker)


def build_tokenizer(spec: PretrainSpec, cache: Path | None = None,
                    say: Callable[[str], None] | None = None) -> AnyTokenizer:
    """data.tokenizer, else the checkpoint's own (model.init = "hf:..."), else bytes.
    `cache`: the store's cache folder, where `bpe:<vocab>` tokenizers are kept."""
    name = spec.data.tokenizer
    if name is None:
        if spec.model.checkpoint is None:
            return ByteTokenizer()
        tok = load_tokenizer(spec.model.init)
    elif (n := bpe_vocab(name)) is not None:
        assert cache is not None, "a bpe tokenizer is trained into the store's cache"
        tok = JsonTokenizer(train_bpe(spec.data, n, cache / "tokenizers", say))
    else:
        tok = load_tokenizer(name)
    vocab = spec.model.build_config().vocab_size
    if tok.vocab_size > vocab:
        raise ValueError(f"the tokenizer {tok.name} has {tok.vocab_size} ids, more than the "
                         f"model's vocab_size ({vocab}) — a tokenizer from another model?")
    return tok


def _text_documents(data: DataSection) -> Iterator[str]:
    """The train split's documents of every text source, as str."""
    for src in data.source_list():
        source = _corpus_source(src, data)
        for doc_id, raw, _ in iter_documents(source):
            if not is_val(doc_id, source.val_permille):
                yield raw.decode("utf-8", errors="replace")


def train_bpe(data: DataSection, vocab: int, folder: Path,
              say: Callable[[str], None] | None = None) -> Path:
    """A byte-level BPE of `vocab` ids (with <|endoftext|>) trained on the train split,
    once: kept in `folder/<key>/tokenizer.json`, keyed by the corpus and the vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    key_src = [fingerprint(_corpus_source(s, data)) for s in data.source_list()]
    key = hashlib.sha256(json.dumps([BPE_VERSION, vocab, key_src]).encode()).hexdigest()[:16]
    path = folder / key / "tokenizer.json"
    if path.is_file():
        return path
    t0 = time.perf_counter()
    if say:
        say(f"pretrain: training a byte-level BPE tokenizer of {vocab:,} ids (once; kept in "
            f"{path.parent})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_text_documents(data), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tokenizer.{os.getpid()}.json")
    tok.save(str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if say:
        say(f"pretrain: BPE tokenizer trained in {time.perf_counter() - t0:.1f} s "
            f"({tok.get_vocab_size():,} ids)")
    return path


# ---------------------------------------------------------------- corpora (worker)


@dataclass
class SourceData:
    """One corpus, ready: its token streams (memmaps) and what it was built from."""

    name: str
    weight: float
    train: Any
    val: Any
    where: str  # the cache folder, or the shards' glob
    val_bytes: int | None  # UTF-8 bytes behind the val tokens (None: shards)


@dataclass
class TrainData:
    sources: list[SourceData]

    @property
    def mixture(self) -> bool:
        return len(self.sources) > 1

    @property
    def train_tokens(self) -> int:
        return sum(len(s.train) for s in self.sources)

    @property
    def val_tokens(self) -> int:
        return sum(len(s.val) for s in self.sources)

    def val_bits_per_byte(self, loss: float) -> float | None:
        """val loss (nats per token) as bits per UTF-8 byte of text: comparable across
        tokenizers. One text source only (a mixture's val rows follow the weights)."""
        if self.mixture or not self.sources[0].val_bytes:
            return None
        s = self.sources[0]
        return loss / math.log(2) * len(s.val) / s.val_bytes

    def loader(self, batch: int, seq_len: int, seed: int, rank: int, world: int,
               ) -> StepLoader:
        from workbench.data.loader import BatchLoader
        from workbench.data.mixture import MixtureLoader

        if not self.mixture:
            return BatchLoader(self.sources[0].train, batch, seq_len, seed=seed, rank=rank,
                               world_size=world)
        return MixtureLoader([s.train for s in self.sources], [s.weight for s in self.sources],
                             [s.name for s in self.sources], batch, seq_len, seed, rank, world)

    def eval(self, val: list[Any], batch: int, seq_len: int, n: int, rank: int, world: int,
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation batches over `val` (each source's val stream, or stand-ins)."""
        from workbench.data.loader import eval_batches
        from workbench.data.mixture import mixture_eval_batches

        if not self.mixture:
            return eval_batches(val[0], batch, seq_len, n, rank=rank, world_size=world)
        return mixture_eval_batches(val, [s.weight for s in self.sources], batch, seq_len, n,
                                    rank=rank, world_size=world)


def _corpus_source(src: SourceSection, data: DataSection) -> Any:
    options: dict[str, Any] = {"val_permille": data.val_permille, "max_bytes": data.max_bytes}
    if src.path != "stdlib":
        options["text_field"] = src.text_field or data.text_field
    return resolve_source(None if src.path == "stdlib" else src.path, **options)


def build_data(spec: PretrainSpec, cache: Path, tokenizer: AnyTokenizer | None = None,
               say: Callable[[str], None] | None = None,
               stage: Callable[[int, int], None] | None = None) -> TrainData:
    """Every source ready to read: text tokenized into `cache/data` (or reused), shards
    memory-mapped where they are. `say` reports a real build's progress, `stage` its
    bytes done of total (see `tokenize_progress`)."""
    from workbench.data.corpus import build_cache
    from workbench.data.shards import ShardStream

    out = []
    for src in spec.data.source_list():
        if is_shard_path(src.path):
            split = split_shards(src.path, src.val_path)
            out.append(SourceData(src.label, src.weight, ShardStream(split.train),
                                  ShardStream(split.val), src.path, None))
            continue
        name = tokenizer.name if tokenizer is not None else "bytes"
        corpus = build_cache(_corpus_source(src, spec.data), cache / "data",
                             tokenizer=tokenizer,
                             progress=tokenize_progress(say, name, stage=stage)
                             if say else None)
        val_bytes = corpus.meta.get("split_bytes", {}).get("val")
        out.append(SourceData(src.label, src.weight, corpus.train, corpus.val,
                              str(corpus.path), val_bytes))
    return TrainData(out)


def tokenize_progress(say: Callable[[str], None], tokenizer: str,
                      every_s: float = PROGRESS_EVERY_S,
                      stage: Callable[[int, int], None] | None = None,
                      ) -> Callable[[int, int], None]:
    """A `progress(bytes_done, bytes_total)` for a cache build: a line at the start, at
    most every `every_s` seconds with the rate and the time left, and at the end.
    `stage(done, total)` is called at the same moments (the run's `stage` event, which
    the dashboard's Overview shows while the run tokenizes)."""
    t0 = time.perf_counter()
    last = [t0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 0:
            say(f"pretrain: tokenizing {total / 1e6:,.1f} MB with {tokenizer}")
            if stage is not None:
                stage(0, total)
            return
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        if stage is not None:
            stage(done, total)
        rate = done / max(now - t0, 1e-9)
        left = (total - done) / rate if rate > 0 else 0.0
        bar = "#" * int(20 * done / max(total, 1))
        say(f"pretrain: tokenizing [{bar:<20}] {100 * done / max(total, 1):5.1f}% "
            f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB  {rate / 1e6:.2f} MB/s  "
            f"{'ETA ' + _clock(left) if done < total else 'done in ' + _clock(now - t0)}")

    return progress


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"
