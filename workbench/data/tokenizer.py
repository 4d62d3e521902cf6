"""Tokenizers behind one small interface: our bytes, or a Hugging Face checkpoint's own.

``Tokenizer`` is what recipes need from one:

- ``encode(text)`` / ``decode(ids)`` (decode drops special tokens);
- ``vocab_size`` (the smallest embedding that holds every id), ``eos_id`` (appended
  after each document of a corpus), ``bos_id`` (None when the tokenizer adds none);
- ``stop_ids``: the ids that end a generated turn (EOS and a chat template's
  end-of-turn token, e.g. Qwen's ``<|im_end|>``, Llama 3's ``<|eot_id|>``);
- ``prompt_ids(user, system)``: a chat prompt through the chat template, ending where the
  assistant's reply begins (bytes: BOS + the text, no template);
- ``fingerprint()``: a hash of everything that decides the ids, for cache keys.

``load_tokenizer(spec)`` takes what `data.tokenizer` and `model.init` name:

- "bytes": our byte-level tokenizer (260 ids);
- a ``tokenizer.json`` file, or a folder holding one: the `tokenizers` library directly
  (fast, parallel batch encoding; what pretraining on a corpus needs);
- ``hf:<folder>`` or a folder without tokenizer.json (a SentencePiece checkpoint):
  transformers' ``AutoTokenizer``, offline, from local files only (chat templates, for
  RL and continued pretraining from a checkpoint);
- "gpt2-bin": GPT-2's 50,257 ids, for llm.c / modded-nanogpt ``.bin`` shards that are
  already tokenized. It only sizes the vocabulary; samples decode through `tiktoken`
  when it is installed, else as their ids.

``tokenizer_vocab(spec)`` checks a `data.tokenizer` value and returns its vocabulary
size without importing transformers, so `wb launch` refuses a bad one at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

from workbench.data.byte_level import BOS, EOS, VOCAB_SIZE, decode, encode

GPT2_BIN = "gpt2-bin"
GPT2_VOCAB, GPT2_EOS = 50257, 50256
# End-of-text tokens a tokenizer.json may define, most common first.
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|im_end|>")

HF_HINT = "pip install 'workbench-lab[hf]'"
SENTINEL = "\u2063wb-sentinel\u2063"


class TokenizerError(ValueError):
    """A tokenizer we cannot use; the message is one line naming the fix."""


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int
    bos_id: int | None
    stop_ids: list[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]: ...

    def fingerprint(self) -> str: ...


class ByteTokenizer:
    """Our byte-level tokenizer (data/byte_level.py): ids 0..255 are bytes, then specials."""

    name = "bytes"
    vocab_size = VOCAB_SIZE
    eos_id = EOS
    bos_id: int | None = BOS
    stop_ids = [EOS]

    def encode(self, text: str) -> list[int]:
        return encode(text).tolist()

    def decode(self, ids: list[int]) -> str:
        return decode(ids)

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]:
        """BOS + the text: the byte models learn the task format, not a chat template."""
        return [BOS, *self.encode(user)]

    def fingerprint(self) -> str:
        return "bytes-1"


class HFTokenizer:
    """A checkpoint folder's tokenizer, through transformers' AutoTokenizer."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser().resolve()
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise TokenizerError(f"a Hugging Face tokenizer needs transformers — {HF_HINT}"
                                 ) from None
        try:
            self.tok = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TokenizerError(f"{self.folder}: no usable tokenizer ({first})") from None
        self.name = f"hf:{self.folder}"
        self.vocab_size = len(self.tok)
        eos = self.tok.eos_token_id
        if eos is None:
            raise TokenizerError(f"{self.folder}: the tokenizer has no eos_token — set one in "
                                 "tokenizer_config.json")
        self.eos_id = int(eos)
        self.bos_id = None if self.tok.bos_token_id is None else int(self.tok.bos_token_id)
        self.stop_ids = self._stop_ids()

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (the fast tokenizer runs them in parallel)."""
        return [list(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tok, "chat_template", None))

    def require_chat_template(self) -> None:
        if not self.has_chat_template:
            raise TokenizerError(f"{self.folder}: the tokenizer has no chat template — add "
                                 "chat_template to tokenizer_config.json (or a "
                                 "chat_template.jinja) or use a chat/instruct checkpoint")

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]:
        self.require_chat_template()
        messages = [{"role": "user", "content": user}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        text = self.tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=True)
        return self.encode(text)

    def _stop_ids(self) -> list[int]:
        """EOS, generation_config's eos ids and the template's end-of-turn token: the
        first special token the template writes after an assistant message."""
        ids = [self.eos_id]
        gen = self.folder / "generation_config.json"
        if gen.is_file():
            extra = json.loads(gen.read_text()).get("eos_token_id")
            ids += extra if isinstance(extra, list) else [extra] if extra is not None else []
        if self.has_chat_template:
            try:
                text = self.tok.apply_chat_template(
                    [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": SENTINEL}], tokenize=False)
            except Exception:  # noqa: BLE001 - a template that rejects this probe
                text = ""
            if SENTINEL in text:
                tail = self.encode(text.split(SENTINEL, 1)[1])
                special = set(self.tok.all_special_ids) | {
                    i for i, t in self.tok.added_tokens_decoder.items() if t.special}
                turn_end = next((i for i in tail if i in special), None)
                if turn_end is not None:
                    ids.append(int(turn_end))
        return sorted(set(int(i) for i in ids))

    def fingerprint(self) -> str:
        """Hash of the tokenizer files' contents (not their paths or times)."""
        h = hashlib.blake2b(digest_size=8)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json"):
            path = self.folder / name
            if path.is_file():
                h.update(name.encode())
                h.update(path.read_bytes())
        return f"hf-{h.hexdigest()}"


class JsonTokenizer:
    """A ``tokenizer.json`` through the `tokenizers` library: no chat template, no
    transformers import; batch encoding runs on every core."""

    bos_id: int | None = None

    def __init__(self, path: str | Path) -> None:
        path = Path(path).expanduser().resolve()
        self.path = path / "tokenizer.json" if path.is_dir() else path
        from tokenizers import Tokenizer as _Tokenizer

        try:
            self.tok = _Tokenizer.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - the library raises plain Exception
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TokenizerError(f"{self.path}: not a tokenizer.json ({first})") from None
        self.name = str(self.path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._eos()
        self.stop_ids = [self.eos_id]

    def _eos(self) -> int:
        """The end-of-text id: tokenizer_config.json's eos_token beside the file, else
        the first of EOS_NAMES the vocabulary has."""
        config = self.path.parent / "tokenizer_config.json"
        names = list(EOS_NAMES)
        if config.is_file():
            eos = json.loads(config.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str):
                names.insert(0, eos)
        for name in names:
            if (i := self.tok.token_to_id(name)) is not None:
                return int(i)
        raise TokenizerError(f"{self.path}: no end-of-text token (one of "
                             f"{', '.join(EOS_NAMES[:3])}) — add it as a special token or "
                             "set eos_token in a tokenizer_config.json beside it")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once, in parallel (no offsets computed where the library can)."""
        fast = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]:
        return self.encode(user if not system else f"{system}\n\n{user}")

    def fingerprint(self) -> str:
        h = hashlib.blake2b(self.path.read_bytes(), digest_size=8)
        return f"json-{h.hexdigest()}-eos{self.eos_id}"


class Gpt2BinTokenizer:
    """GPT-2's vocabulary for pre-tokenized `.bin` shards: sizes the embedding and
    decodes samples (through tiktoken when it is installed; else the ids are shown)."""

    name = GPT2_BIN
    vocab_size = GPT2_VOCAB
    eos_id = GPT2_EOS
    bos_id: int | None = None
    stop_ids = [GPT2_EOS]

    def __init__(self) -> None:
        try:
            import tiktoken

            self._enc: Any = tiktoken.get_encoding("gpt2")
        except Exception:  # noqa: BLE001 - not installed, or its files not cached offline
            self._enc = None

    def encode(self, text: str) -> list[int]:
        if self._enc is None:
            raise TokenizerError("gpt2-bin only decodes .bin shards' ids; to tokenize text "
                                 "give data.tokenizer a GPT-2 tokenizer.json")
        return list(self._enc.encode_ordinary(text))

    def decode(self, ids: list[int]) -> str:
        if self._enc is None:
            return " ".join(f"<{int(i)}>" for i in ids)
        return self._enc.decode([int(i) for i in ids if int(i) != GPT2_EOS])

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]:
        return self.encode(user)

    def fingerprint(self) -> str:
        return "gpt2-bin"


AnyTokenizer = ByteTokenizer | HFTokenizer | JsonTokenizer | Gpt2BinTokenizer


def load_tokenizer(spec: str | None) -> AnyTokenizer:
    """See the module docstring for the forms `spec` takes."""
    if spec in (None, "", "bytes"):
        return ByteTokenizer()
    if spec == GPT2_BIN:
        return Gpt2BinTokenizer()
    if spec.startswith("hf:"):
        return HFTokenizer(spec[3:])
    path = Path(spec).expanduser()
    if path.is_file() or (path / "tokenizer.json").is_file():
        return JsonTokenizer(path)
    if path.is_dir():
        return HFTokenizer(path)
    raise TokenizerError(f"tokenizer {spec!r}: no such file or folder — give a "
                         "tokenizer.json, a folder holding one, 'gpt2-bin' or 'bytes'")


def tokenizer_vocab(spec: str) -> int:
    """Check a `data.tokenizer` value; its vocabulary size (raises TokenizerError)."""
    if spec in ("", "bytes"):
        return VOCAB_SIZE
    if spec == GPT2_BIN:
        return GPT2_VOCAB
    path = Path(spec).expanduser()
    if path.is_file() or (path / "tokenizer.json").is_file():
        return JsonTokenizer(path).vocab_size
    return load_tokenizer(spec).vocab_size


def info(tok: Any) -> dict[str, Any]:
    """What a run records about its tokenizer."""
    return {"name": tok.name, "vocab_size": tok.vocab_size, "eos": tok.eos_id,
            "bos": tok.bos_id, "stop_ids": list(tok.stop_ids), "fingerprint": tok.fingerprint()}
