"""The `[data]` section of a pretrain spec and its spec-time checks.

`check_data` runs when the spec is validated (before any run row exists): it resolves
every source, reads .bin shard headers and Parquet footers, and loads the tokenizer's
vocabulary, so a bad input is refused in one line. Torch-free, like spec.py.

Its own module because spec.py (PretrainSpec's validator calls `check_data`) and
data.py (the worker's `build_tokenizer` / `build_data` read these sections) both
need it, and neither may import the other back (tests/test_layout.py). spec.py
re-exports `DataSection` and `SourceSection`, data.py `check_data`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from workbench.data.corpus import VOCAB_SIZE, list_files, parquet_text_column, resolve_source
from workbench.data.shards import ShardError, is_shard_path, split_shards
from workbench.data.tokenizer import GPT2_BIN, TokenizerError, tokenizer_vocab
from workbench.spec import Section

BPE_PREFIX = "bpe:"


class SourceSection(Section):
    """One corpus of a mixture (`[[data.sources]]`)."""

    path: str = Field(description="Like data.path: text, folder, JSONL, Parquet or .bin shards.")
    weight: float = Field(1.0, gt=0, description="Share of the batch rows drawn from it "
                          "(normalized over the sources).")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Its name in "
                             "train/source_frac/<name>; default: the file or folder name.")
    text_field: str | None = Field(None, min_length=1, description="Its JSONL / Parquet text "
                                   "field; default: data.text_field.")
    val_path: str | None = Field(None, description=".bin shards: the validation shards' glob.")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        stem = Path(self.path.rstrip("/*")).name.split("*")[0].rstrip("_-.") or "source"
        return stem.removesuffix(".bin").removesuffix(".parquet").removesuffix(".jsonl")


class DataSection(Section):
    """The corpus: the Python stdlib's source by default (recipes/pretrain/data.py)."""

    path: str | None = Field(None, description="Text file, directory, JSONL, Parquet file or "
                             "folder, or llm.c .bin shards (a glob, folder or file); unset = "
                             "the Python standard library's source files.")
    text_field: str = Field("text", min_length=1, description="JSONL field or Parquet column "
                            "holding the text.")
    tokenizer: str | None = Field(None, min_length=1, description="'bytes', a tokenizer.json "
                                  "(or a folder holding one), 'gpt2-bin' (GPT-2 ids of .bin "
                                  "shards) or 'bpe:<vocab>' (train a byte-level BPE on the "
                                  "corpus once, cached in the store); unset = bytes, or the "
                                  "checkpoint's own with model.init = 'hf:...'.")
    val_path: str | None = Field(None, description=".bin shards: glob of the validation "
                                 "shards; unset = the shards whose names contain 'val'.")
    val_permille: int = Field(10, ge=0, lt=1000, description="Documents held out for "
                              "validation, per thousand (text, JSONL, Parquet).")
    max_bytes: int | None = Field(None, ge=1, description="Read at most this many bytes of "
                                  "input (whole files, in order); for tiny runs.")
    sources: list[SourceSection] | None = Field(None, min_length=1, description="A mixture: "
                                                "[[data.sources]] with path and weight; "
                                                "data.path must then be unset.")

    def source_list(self) -> list[SourceSection]:
        """The corpora: the mixture's, else data.path (or the stdlib) as one source."""
        if self.sources:
            return self.sources
        return [SourceSection(path=self.path or "stdlib", name="main",
                              val_path=self.val_path)]


# ---------------------------------------------------------------- checks


def bpe_vocab(tokenizer: str | None) -> int | None:
    """N of "bpe:N", None for anything else (raises ValueError on a bad N)."""
    if tokenizer is None or not tokenizer.startswith(BPE_PREFIX):
        return None
    text = tokenizer[len(BPE_PREFIX):]
    if not text.isdigit() or not 512 <= int(text) <= 1 << 20:
        raise ValueError(f"data.tokenizer {tokenizer!r}: use 'bpe:<vocab>' with a vocabulary "
                         "of 512 to 1048576, e.g. 'bpe:4096'")
    return int(text)


def check_source(src: SourceSection, text_field: str, where: str) -> str:
    """Validate one source; its kind ("shards" or a corpus.Source kind)."""
    if is_shard_path(src.path):
        try:
            split_shards(src.path, src.val_path)
        except ShardError as exc:
            raise ValueError(f"{where}: {exc}") from None
        return "shards"
    if src.val_path:
        raise ValueError(f"{where}: val_path applies to .bin shards only; a text corpus is "
                         "split by data.val_permille — drop it")
    try:
        source = resolve_source(None if src.path == "stdlib" else src.path)
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file or directory {src.path!r} — point it at a "
                         "text file, a directory, JSONL, Parquet or .bin shards") from None
    if source.kind == "parquet":
        field = src.text_field or text_field
        try:
            for f in list_files(source):
                parquet_text_column(f.path, field)
        except ImportError:
            raise ValueError(f"{where}: reading Parquet needs pyarrow — pip install "
                             "pyarrow") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return source.kind


def check_data(data: DataSection, checkpoint: bool = False) -> int:
    """Refuse a bad data section in one line; the tokenizer's vocabulary size.

    `checkpoint`: model.init is an `hf:` folder, whose tokenizer is used when
    data.tokenizer is unset (the caller compares sizes)."""
    if data.sources and data.path not in (None, ""):
        raise ValueError("data.path and [[data.sources]] are both set — list data.path as "
                         "one of the sources instead")
    sources = data.source_list()
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise ValueError(f"[[data.sources]]: two sources are named {labels[0]!r} — give "
                         "each a distinct name")
    kinds = []
    for i, src in enumerate(sources):
        where = f"data.sources[{i}].path" if data.sources else "data.path"
        kinds.append(check_source(src, data.text_field, where))
    bpe = bpe_vocab(data.tokenizer)
    if bpe is not None:
        if "shards" in kinds:
            raise ValueError("data.tokenizer 'bpe:...' trains on text; .bin shards are "
                             "tokenized already — declare their tokenizer ('gpt2-bin' or a "
                             "tokenizer.json)")
        return bpe
    if "shards" in kinds and data.tokenizer in (None, "bytes") and not checkpoint:
        raise ValueError("data.tokenizer: .bin shards need their tokenizer declared — "
                         "'gpt2-bin' for llm.c / modded-nanogpt GPT-2 shards, or a "
                         "tokenizer.json")
    if data.tokenizer is None:
        return VOCAB_SIZE
    try:
        vocab = tokenizer_vocab(data.tokenizer)
    except TokenizerError as exc:
        raise ValueError(f"data.tokenizer: {exc}") from None
    if data.tokenizer == GPT2_BIN and any(k != "shards" for k in kinds):
        if not _has_tiktoken():
            raise ValueError("data.tokenizer 'gpt2-bin' cannot tokenize text sources here "
                             "(no tiktoken) — give a GPT-2 tokenizer.json instead")
    return vocab


def _has_tiktoken() -> bool:
    from workbench.data.tokenizer import Gpt2BinTokenizer

    return Gpt2BinTokenizer()._enc is not None
