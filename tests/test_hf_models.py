"""Llama-family Hugging Face checkpoints in our GPT (models/hf.py, models/hf_config.py).

Every checkpoint is a tiny random model that transformers builds and saves inside the
test (nothing downloads). Norm weights and biases are perturbed away from their 1 / 0
initialization so that a dropped norm or bias cannot pass unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from workbench.models.gpt import GPT  # noqa: E402
from workbench.models.hf import hf_name, load_hf, save_hf  # noqa: E402
from workbench.models.hf_config import CheckpointError, load_gpt_config  # noqa: E402
from workbench.optim.qkclip import qk_clip  # noqa: E402
from workbench.optim.routing import route  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
CASES = {
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama-untied-llama3": ("llama", dict(tie_word_embeddings=False, rope_theta=500000.0,
                                          rope_scaling=LLAMA3_ROPE)),
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-untied-mha": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=4)),
    "qwen3-tied": ("qwen3", dict(tie_word_embeddings=True, head_dim=32)),
    "qwen3-untied": ("qwen3", dict(tie_word_embeddings=False, head_dim=16)),
}


def hf_config(family: str, **extra):
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "qwen3": transformers.Qwen3Config}[family]
    return cls(**{**SMALL, **extra})


def build(folder: Path, family: str, seed: int = 0, **extra):
    """A random checkpoint saved with save_pretrained; returns the transformers model."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family, **extra)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(str(folder), **({"max_shard_size": "40KB"} if extra.pop(
        "_sharded", False) else {}))
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    family, extra = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, build(folder, family, **extra)


def tokens(seed: int = 1, T: int = 40) -> torch.Tensor:
    return torch.randint(0, 96, (2, T), generator=torch.Generator().manual_seed(seed))


def test_forward_equals_transformers(checkpoint) -> None:
    name, folder, ref = checkpoint
    ours = load_hf(folder).eval()
    x = tokens()
    with torch.no_grad():
        diff = (ref(x).logits - ours(x).logits).abs().max().item()
    print(f"{name}: largest logit difference {diff:.3g}")
    assert diff < 1e-5
    assert ours.config.family == CASES[name][0]
    assert (ours.lm_head.weight is ours.embed.weight) == ours.config.tie_embeddings


def test_llama3_rope_scaling_is_what_matters() -> None:
    """The llama3 case above would fail with plain RoPE: the scaling changes the logits."""
    from workbench.models.config import GPTConfig

    base = GPTConfig(vocab_size=96, seq_len=64, n_layer=1, n_head=4, n_kv_head=2, d_model=64,
                     rope_theta=500000.0)
    torch.manual_seed(0)
    plain = GPT(base).eval()
    scaled = GPT(GPTConfig(**{**vars(base), "rope_scaling": LLAMA3_ROPE})).eval()
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert (plain(tokens()).logits - scaled(tokens()).logits).abs().max() > 1e-3


def test_sharded_checkpoint_loads(tmp_path: Path) -> None:
    ref = build(tmp_path, "qwen2", tie_word_embeddings=False, _sharded=True)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    with torch.no_grad():
        assert (ref(tokens()).logits - load_hf(tmp_path)(tokens()).logits).abs().max() < 1e-5


# ----------------------------------------------------------------------------- max logits


class Capture:
    """A transformers attention function that records the per-head max pre-softmax logit
    from the q and k transformers itself computed (after its RoPE and QK-norm, with its
    biases), then attends with plain eager math: an independent reference."""

    def __init__(self) -> None:
        self.per_layer: list[torch.Tensor] = []

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                 **kwargs):
        groups = query.size(1) // key.size(1)
        k = key.repeat_interleave(groups, dim=1)
        v = value.repeat_interleave(groups, dim=1)
        scores = (query @ k.transpose(-1, -2)) * scaling
        T = query.size(2)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        self.per_layer.append(scores.amax(dim=(0, 2, 3)).detach())
        out = torch.softmax(scores.float(), dim=-1).to(value.dtype) @ v
        return out.transpose(1, 2).contiguous(), None


def reference_max_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    capture = Capture()
    transformers.AttentionInterface.register("wb_capture", capture)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), attn_implementation="wb_capture").eval()
    with torch.no_grad():
        model(x)
    return torch.stack(capture.per_layer)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_max_logit_per_head_equals_the_reference(checkpoint, backend: str) -> None:
    _, folder, _ = checkpoint
    x = tokens(seed=2)
    ours = load_hf(folder, attn_backend=backend).eval()
    got = ours.attention_max_logits(x)
    want = reference_max_logits(folder, x)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- QK-Clip


def scaled_up(folder: Path) -> GPT:
    """The checkpoint with q/k weights (and biases, norms) scaled so logits are large."""
    model = load_hf(folder, attn_backend="naive").eval()
    with torch.no_grad():
        for attn in model.attn_layers():
            for proj in (attn.q_proj, attn.k_proj):
                proj.weight.mul_(3.0)
                if proj.bias is not None:
                    proj.bias.mul_(3.0)
            if attn.q_norm is not None:
                attn.q_norm.weight.mul_(3.0)
                attn.k_norm.weight.mul_(3.0)
    return model


def attention_inputs(model: GPT, x: torch.Tensor) -> list[torch.Tensor]:
    """What each attention layer sees. Clipping layer l changes the input of layer l + 1,
    so each layer's logits are compared on its own input from before the clip."""
    seen: list[torch.Tensor] = []
    hooks = [a.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
             for a in model.attn_layers()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def layer_max_logits(model: GPT, inputs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([a(x, track_max_logits=True)[1]
                            for a, x in zip(model.attn_layers(), inputs, strict=True)])


def test_qk_clip_brings_clipped_heads_to_tau(checkpoint) -> None:
    """Llama and Qwen2 (biases included; GQA scales query rows, MHA both): each clipped
    head's max logit lands on tau, the others are untouched bit for bit. Qwen3 (QK-norm):
    the layer is scaled through its shared norm weights, so its largest head lands on tau
    and every head of that layer shrinks by the same factor."""
    name, _, _ = checkpoint
    model = scaled_up(checkpoint[1])
    inputs = attention_inputs(model, tokens(seed=3))
    before = layer_max_logits(model, inputs)
    tau = float(before.median())
    result = qk_clip(model.attn_layers(), before, tau=tau)
    after = layer_max_logits(model, inputs)
    clipped = before > tau
    assert result.clipped == int(clipped.sum()) > 0
    if CASES[name][0] == "qwen3":
        assert sorted(result.norm_layers) == sorted(set(clipped.nonzero()[:, 0].tolist()))
        for layer in range(before.size(0)):
            factor = (tau / before[layer].max()).item() if clipped[layer].any() else 1.0
            torch.testing.assert_close(after[layer], before[layer] * factor, rtol=1e-4,
                                       atol=1e-4)
            if clipped[layer].any():
                assert after[layer].max().item() == pytest.approx(tau, rel=1e-4)
    else:
        assert not result.norm_layers
        torch.testing.assert_close(after[clipped], torch.full_like(after[clipped], tau),
                                   rtol=1e-4, atol=1e-4)
        assert torch.equal(after[~clipped], before[~clipped])


# ----------------------------------------------------------------------------- the rest


def test_kv_cache_decoding_equals_the_full_forward(checkpoint) -> None:
    from workbench.models.gpt import KVCache

    _, folder, _ = checkpoint
    model = load_hf(folder, seq_len=48).eval()
    x = tokens(seed=4, T=24)
    cache = KVCache.empty(model.config, slots=2, max_len=48)
    with torch.no_grad():
        full = model(x).logits
        first = model.forward_cached(x[:, :16], cache)
        steps = [model.forward_cached(x[:, t:t + 1], cache) for t in range(16, 24)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-4, rtol=1e-4)


def test_muon_routing_on_a_checkpoint(checkpoint) -> None:
    _, folder, _ = checkpoint
    model = load_hf(folder)
    rows = {r["name"]: r for r in route(model).table()}
    for name, row in rows.items():
        leaf = name.rsplit(".", 1)[-1]
        hidden = any(f"{p}_proj.weight" in name for p in ("q", "k", "v", "o", "gate", "up",
                                                         "down"))
        want = "muon" if hidden and leaf == "weight" else "adamw"
        assert row["optimizer"] == want, (name, row)
    assert any("q_norm" in n for n in rows) == (CASES[checkpoint[0]][0] == "qwen3")
    assert any(n.endswith("q_proj.bias") for n in rows) == (CASES[checkpoint[0]][0] == "qwen2")


def test_export_round_trip_after_training(checkpoint, tmp_path: Path) -> None:
    """Load, two optimizer steps, export: transformers loads the folder and gives our
    logits."""
    _, folder, _ = checkpoint
    model = load_hf(folder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(2):
        x = tokens(seed=10 + step)
        loss = model(x[:, :-1], targets=x[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = save_hf(model.eval(), tmp_path / "export")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    x = tokens(seed=5)
    with torch.no_grad():
        assert (theirs(x).logits - model(x).logits).abs().max() < 1e-5
    assert json.loads((out / "config.json").read_text())["model_type"] == CASES[checkpoint[0]][0]


def test_hf_names_cover_every_parameter(checkpoint) -> None:
    _, folder, ref = checkpoint
    ours = load_hf(folder)
    theirs = set(ref.state_dict())
    mapped = {hf_name(n) for n in ours.state_dict()}
    if ours.config.tie_embeddings:
        mapped.discard("lm_head.weight")
        theirs.discard("lm_head.weight")
    assert mapped == theirs


@pytest.mark.parametrize(("edit", "message"), [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported — supported: llama, qwen2, "
                             "qwen3"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0},
      "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
    ({"mlp_bias": True}, "mlp_bias"),
])
def test_unsupported_checkpoints_are_refused_in_one_line(tmp_path: Path, edit: dict,
                                                         message: str) -> None:
    build(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(CheckpointError) as e:
        load_hf(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_gpt_config(tmp_path / "nope")
    tmp_path.joinpath("config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_gpt_config(tmp_path)
    build(tmp_path / "ok", "llama")
    with pytest.raises(CheckpointError, match="exceeds the checkpoint's max_position"):
        load_gpt_config(tmp_path / "ok", seq_len=65)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_wb_example_model_writes_a_loadable_checkpoint(tmp_path: Path, family: str) -> None:
    """`wb example-model`: real files that transformers and our loader read alike, a chat
    template, and the end-of-turn token among the stop ids."""
    from tests.helpers import wb_inproc
    from workbench.data.tokenizer import load_tokenizer

    out = tmp_path / "ckpt"
    proc = wb_inproc("example-model", str(out), "--family", family, check=True)
    assert f"hf:{out}" in proc.stdout
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = load_tokenizer(f"hf:{out}")
    ids = torch.tensor([tok.prompt_ids("sum: 3 4\n", "Think first.")])
    with torch.no_grad():
        assert (theirs(ids).logits - load_hf(out)(ids).logits).abs().max() < 1e-5
    assert tok.tok.convert_tokens_to_ids("<|im_end|>") in tok.stop_ids
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    again = wb_inproc("example-model", str(out))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    bad = wb_inproc("example-model", str(tmp_path / "x"), "--family", "gpt2")
    assert bad.returncode == 2 and "qwen2, qwen3, llama" in bad.stderr
    assert not (tmp_path / "x").exists()
