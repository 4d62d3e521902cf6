"""The `pretrain` spec: the sections every trained kind shares (`TrainedSpec`, in
recipes/common/trained_spec.py: model, optim, train, stability) plus the corpus (`data`).

Free of torch (the model configs live in models/config.py), so `wb launch` validates a
spec and refuses a bad one before anything heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from workbench.data.corpus import VOCAB_SIZE
from workbench.models.hf_config import HF_PREFIX
from workbench.recipes.common.trained_spec import TrainedSpec
from workbench.recipes.pretrain.data_spec import DataSection as DataSection
from workbench.recipes.pretrain.data_spec import SourceSection as SourceSection
from workbench.recipes.pretrain.data_spec import check_data


def _pin(path: str | None) -> str | None:
    """A relative path (or glob) as an absolute one; keywords stay as they are."""
    if path in (None, "", "stdlib", "bytes", "gpt2-bin") or path.startswith("bpe:"):
        return path
    p = Path(os.path.expanduser(path))
    return str(p.resolve() if p.exists() else p.absolute())


def pinned_paths(data: DataSection) -> dict[str, object]:
    """data's paths pinned to where `wb launch` ran."""
    out: dict[str, object] = {"path": _pin(data.path), "val_path": _pin(data.val_path),
                              "tokenizer": _pin(data.tokenizer)}
    if data.sources:
        out["sources"] = [s.model_copy(update={"path": _pin(s.path),
                                               "val_path": _pin(s.val_path)})
                          for s in data.sources]
    return out


class PretrainSpec(TrainedSpec):
    kind: Literal["pretrain"]
    data: DataSection = Field(default_factory=DataSection)

    def for_launch(self) -> PretrainSpec:
        """A relative data.path or model.init folder is pinned to where `wb launch` ran."""
        spec = self.model_copy(deep=True)
        spec.data = spec.data.model_copy(update=pinned_paths(self.data))
        if (folder := self.model.checkpoint) is not None:
            spec.model.init = f"{HF_PREFIX}{folder.resolve()}"
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> PretrainSpec:
        vocab = check_data(self.data, checkpoint=self.model.checkpoint is not None)
        if self.model.checkpoint is None:
            self.model._vocab_size = padded_vocab(vocab)
        elif self.data.tokenizer is not None:
            embedding = self.model.build_config().vocab_size
            if vocab > embedding:
                raise ValueError(f"data.tokenizer has {vocab:,} ids, more than the embedding "
                                 f"of model.init ({embedding:,}) — use that checkpoint's own "
                                 "tokenizer (unset data.tokenizer)")
        return self


def padded_vocab(n: int) -> int:
    """Embedding rows for a tokenizer of n ids: our 260 bytes as they are, anything
    else rounded up to a multiple of 64 (nanoGPT's 50,257 -> 50,304; faster matmuls)."""
    return n if n == VOCAB_SIZE else -(-n // 64) * 64
