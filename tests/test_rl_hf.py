"""RL from a Hugging Face checkpoint (`policy.init = "hf:<folder>"`), offline: the tiny
example checkpoint (models/example.py) and others written next to it with its tokenizer.

Covers the torch engine on a loaded checkpoint (stop on any stop id, log-probs), a real
`wb launch` + `wb resume` of an hf: policy, the refusals before launch, and the names
vLLM's loader gets for every family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_nothing_created, wb, wb_inproc
from workbench.data.tokenizer import HFTokenizer, load_tokenizer
from workbench.engine import Completion, Request, generate_all, make_engine
from workbench.models.config import GPTConfig
from workbench.models.example import write_example_model
from workbench.models.gpt import GPT
from workbench.models.hf import load_hf, save_hf
from workbench.spec import SpecError, parse_spec
from workbench.store import Store

FAMILIES = ("llama", "qwen2", "qwen3")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example checkpoint (Qwen2, tied head, ChatML tokenizer): written once."""
    return write_example_model(tmp_path_factory.mktemp("hf") / "qwen2")


def family_config(family: str, vocab_size: int, tie: bool = True) -> GPTConfig:
    """A tiny GPT of `family`: Qwen2's q/k/v biases, Qwen3's QK-norm, Llama's neither."""
    return GPTConfig(vocab_size=vocab_size, seq_len=256, n_layer=2, n_head=4, n_kv_head=2,
                     d_model=64, tie_embeddings=tie, qkv_bias=family == "qwen2",
                     qk_norm=family == "qwen3", family=family, norm_eps=1e-6)


@pytest.fixture(scope="module")
def untied_llama(example: Path) -> Path:
    """A Llama checkpoint with its own head (untied), the example's tokenizer beside it."""
    torch.manual_seed(3)
    vocab = load_tokenizer(f"hf:{example}").vocab_size
    model = GPT(family_config("llama", vocab, tie=False))
    return save_hf(model, example.parent / "llama", tokenizer_from=example)


# ----------------------------------------------------------------------------- engine


def full_logprobs(model: GPT, c: Completion, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) of each completion token by one full forward on prompt + completion,
    at `temperature` (logits / T)."""
    with torch.no_grad():
        logits = model(torch.tensor([c.prompt + c.tokens])).logits[0].float()
        logp = F.log_softmax(logits / temperature, -1)
    start = len(c.prompt)
    return logp[start - 1:-1].gather(1, torch.tensor(c.tokens).unsqueeze(1)).squeeze(1)


def test_torch_engine_stops_on_any_stop_id_of_a_loaded_checkpoint(untied_llama: Path) -> None:
    """The chat model's turn ends on <|im_end|> or on <|endoftext|> (its two stop ids).
    The head's rows of the stop ids are zeroed (logit 0: a random model's greedy pick is
    always above it), so the model writes neither; then one of them swaps rows with a
    token the model first writes at step k, so the same model writes the stop id there
    and must stop on it, with everything before unchanged."""
    tok = load_tokenizer(f"hf:{untied_llama}")
    assert isinstance(tok, HFTokenizer)
    end_of_turn = tok.tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in tok.stop_ids and len(tok.stop_ids) == 2
    model = load_hf(untied_llama, seq_len=128, attn_backend="sdpa").eval()
    prompt = tok.prompt_ids("sum: 3 4\n", "Think, then answer in \\boxed{}.")
    assert prompt[-1] != end_of_turn and end_of_turn in prompt  # the template's turns
    head = model.lm_head.weight
    with torch.no_grad():
        head[tok.stop_ids] = 0.0

    def greedy(**kw: Any) -> Completion:
        engine = make_engine("torch", model, max_batch=2, max_len=128, temperature=0.0, **kw)
        return generate_all(engine, [Request(0, prompt, max_new_tokens=24)])[0]

    free = greedy(ignore_eos=True)
    assert free.finish == "length" and not set(free.tokens) & set(tok.stop_ids)
    k = next(i for i, t in enumerate(free.tokens) if i >= 3 and t not in free.tokens[:i])
    for stop, other in (tok.stop_ids, tok.stop_ids[::-1]):
        rows = torch.tensor([free.tokens[k], stop])
        with torch.no_grad():
            head[rows] = head[rows.flip(0)].clone()
        out = greedy(eos_id=tok.stop_ids)
        assert out.finish == "stop" and out.tokens == [*free.tokens[:k], stop]
        assert greedy(eos_id=stop).tokens == out.tokens  # the one-id API
        assert greedy(eos_id=other).finish == "length"  # one id stops on itself only
        with torch.no_grad():
            head[rows] = head[rows.flip(0)].clone()  # back


def test_logprobs_of_a_loaded_checkpoint_equal_a_full_forward(example: Path) -> None:
    """Sampled tokens' log-probs = the checkpoint's log-softmax at the sampling
    temperature, recomputed by a plain forward on chat prompt + completion (what the
    trainer does)."""
    tok = load_tokenizer(f"hf:{example}")
    model = load_hf(example, seq_len=160, attn_backend="sdpa").eval()
    engine = make_engine("torch", model, max_batch=4, max_len=160, temperature=0.8, seed=5,
                         eos_id=tok.stop_ids)
    reqs = [Request(i, tok.prompt_ids(f"sum: {i} {i + 2}\n", "Be brief."), max_new_tokens=40)
            for i in range(6)]
    out = generate_all(engine, reqs)
    for c in out:
        torch.testing.assert_close(torch.tensor(c.logprobs), full_logprobs(model, c, 0.8),
                                   atol=1e-4, rtol=1e-4)
        assert not set(c.tokens[:-1]) & set(tok.stop_ids)
    assert len({tuple(c.tokens) for c in out}) > 1


# ----------------------------------------------------------------------------- runs


def spec_text(init: str, steps: int = 3, **policy: Any) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in policy.items())
    return f"""
kind = "rl"
seed = 1
[policy]
init = "{init}"
seq_len = 256
system_prompt = "Think inside <think></think>, then answer in \\\\boxed{{}}."
{extra}
[rollout]
generators = 1
slots = 8
l_max = 24
l_cache = 4
max_staleness = 1
[grpo]
steps = {steps}
group_size = 4
groups_per_step = 2
checkpoint_every = 0
[verifier]
procs = 1
"""


@pytest.mark.slow
def test_hf_policy_runs_records_its_tokenizer_and_resumes(example: Path, tmp_path: Path,
                                                          store_dir: Path) -> None:
    """`wb launch` of an hf: policy: real generator, verifier and trainer processes over
    the chat template; reward rows and the tokenizer are recorded. `wb resume` loads the
    checkpoint back into the checkpoint's architecture."""
    spec = tmp_path / "hf.toml"
    spec.write_text(spec_text(f"hf:{example}"))
    proc = wb("launch", str(spec), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with Store(store_dir, create=False) as st:
        (row,) = st.runs()
        assert row.status == "finished"
        rewards = [v for _, _, _, v, _ in st.scalars(row.id, "rl/reward")]
        assert len(rewards) == 3 and all(0.0 <= r <= 1.0 for r in rewards)
        config = dict(row.config)
        tok = config["tokenizer"]
        assert tok["name"] == f"hf:{example.resolve()}" and tok["vocab_size"] == 1024
        assert tok["stop_ids"] == load_tokenizer(f"hf:{example}").stop_ids
        assert config["policy_config"]["family"] == "qwen2"
        assert config["policy"]["init"] == f"hf:{example.resolve()}"

    again = wb("resume", row.id, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    with Store(store_dir, create=False) as st:
        resumed = next(r for r in st.runs() if r.id != row.id)
        assert resumed.status == "finished"
        (event,) = [e for e in st.events(resumed.id, kind="checkpoint")
                    if e.payload.get("action") == "resumed"]
        assert event.step == 3


@pytest.mark.slow
def test_a_pretrain_run_from_a_checkpoint_starts_rl_with_that_tokenizer(
        example: Path, store_dir: Path, tmp_path: Path) -> None:
    """checkpoint -> continued pretraining -> RL (`policy.init = "run:<id>"`): the policy
    has the checkpoint's shape and the RL run speaks through the checkpoint's tokenizer
    and chat template, not bytes."""
    pre = wb("launch", "muonclip-tiny", "--set", f"model.init=hf:{example}",
             "--set", "model.seq_len=64", "--set", "train.steps=2", "--set",
             "train.batch_size=2", "--set", "train.eval_every=2", "--set",
             "train.eval_batches=1", "--set", "data.max_bytes=40000", "--set",
             "optim.warmup_steps=0", timeout=240)
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    with Store(store_dir, create=False) as st:
        (row,) = st.runs()
    spec = tmp_path / "from-run.toml"
    spec.write_text(spec_text(f"run:{row.id}", steps=2).replace("seq_len = 256\n", ""))
    proc = wb("launch", str(spec), "--set", "rollout.l_max=16", "--set", "rollout.l_cache=4",
              timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with Store(store_dir, create=False) as st:
        rl = next(r for r in st.runs() if r.kind == "rl")
        config = dict(rl.config)
        assert config["tokenizer"]["name"] == f"hf:{example.resolve()}"
        assert config["policy_config"]["family"] == "qwen2"
        assert len(st.scalars(rl.id, "rl/reward")) == 2


def test_builtin_rl_hf_tiny_validates_with_the_example_policy() -> None:
    from workbench.spec import load_spec

    spec = load_spec("rl-hf-tiny").spec
    assert spec.policy.init == "hf:example"  # type: ignore[attr-defined]
    assert spec.for_launch().policy.init == "hf:example"  # not a path: resolved at run start


# ----------------------------------------------------------------------------- refusals


def without_chat_template(example: Path, folder: Path) -> Path:
    shutil.copytree(example, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def gpt2_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(("case", "fragment"), [
    ("missing", "no such checkpoint folder"),
    ("gpt2", "model_type 'gpt2' is not supported"),
    ("no-template", "the tokenizer has no chat template"),
])
def test_unusable_checkpoints_are_refused_before_launch(example: Path, tmp_path: Path,
                                                        store_dir: Path, case: str,
                                                        fragment: str) -> None:
    """One line on stderr naming policy.init, exit 2, no run row and no run folder."""
    folder = {"missing": lambda: Path("/nonexistent"),
              "gpt2": lambda: gpt2_folder(tmp_path / "gpt2"),
              "no-template": lambda: without_chat_template(example, tmp_path / "plain")}[case]()
    spec = tmp_path / "bad.toml"
    spec.write_text(spec_text(f"hf:{folder}"))
    proc = wb_inproc("launch", str(spec), "--detach")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: policy.init: ") and fragment in line, line
    assert_nothing_created(store_dir)


@pytest.mark.parametrize(("init", "policy", "fragment"), [
    ("{example}", {"n_layer": 4}, "policy.n_layer does not apply to an hf: policy"),
    ("{example}", {"seq_len": 1024}, "policy.seq_len (1024) exceeds the checkpoint's "
                                     "max_position_embeddings (512)"),
    ("example", {"seq_len": 1024}, "policy.seq_len (1024) exceeds the example"),
    ("", {}, "use 'warmstart', 'random', 'run:<id>' or 'hf:<folder>'"),
])
def test_bad_hf_policy_keys_are_refused_in_one_line(example: Path, init: str,
                                                    policy: dict[str, Any],
                                                    fragment: str) -> None:
    text = spec_text(f"hf:{init.format(example=example)}").replace("seq_len = 256\n", "")
    overrides = [f"policy.{k}={v}" for k, v in policy.items()]
    with pytest.raises(SpecError) as info:
        parse_spec(text, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_relative_hf_folder_is_made_absolute_at_launch(example: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.chdir(example.parent)
    spec = parse_spec(spec_text(f"hf:{example.name}"))
    assert spec.for_launch().policy.init == f"hf:{example.resolve()}"  # type: ignore


# ----------------------------------------------------------------------------- vLLM


class RecordingBackend:
    """Stands in for vllm.LLMEngine: records the (name, tensor) pairs of weight updates."""

    def __init__(self) -> None:
        self.loaded: list[list[tuple[str, torch.Tensor]]] = []

    def collective_rpc(self, method: str, args: tuple = ()) -> list[int]:
        assert method == "wb_load_weights"
        self.loaded.append(list(args[0]))
        return [len(args[0])]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tie", [True, False])
def test_vllm_weight_names_are_the_checkpoint_names_of_every_family(
        family: str, tie: bool, tmp_path: Path) -> None:
    """An in-flight update hands vLLM's loader exactly the tensors (names, shapes) of a
    transformers model of the same family, biases (Qwen2) and q_norm / k_norm (Qwen3)
    included; the exported folder's config.json is that family's."""
    transformers = pytest.importorskip("transformers")
    from workbench.engine.vllm import VLLMEngine, export_hf

    torch.manual_seed(0)
    model = GPT(family_config(family, vocab_size=300, tie=tie))
    folder = export_hf(model, tmp_path / family)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family and config["tie_word_embeddings"] is tie
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()
    if tie:
        reference.pop("lm_head.weight")
    backend = RecordingBackend()
    engine = VLLMEngine(model, max_batch=2, max_len=64, backend=backend)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}  # as compiled
    engine.load_weights(state, version=1)
    (pairs,) = backend.loaded
    assert {n: tuple(t.shape) for n, t in pairs} == \
        {n: tuple(t.shape) for n, t in reference.items()}
    names = {n for n, _ in pairs}
    assert ("model.layers.0.self_attn.q_proj.bias" in names) is (family == "qwen2")
    assert ("model.layers.1.self_attn.k_norm.weight" in names) is (family == "qwen3")
    for name, tensor in pairs:
        torch.testing.assert_close(tensor, reference[name])


def test_generators_give_vllm_the_checkpoint_folder_and_stop_ids(example: Path) -> None:
    from workbench.engine.vllm import sampling_kwargs
    from workbench.recipes.rl.generator import engine_options

    tok = load_tokenizer(f"hf:{example}")
    assert engine_options("vllm", tok) == {"stop_ids": tok.stop_ids,
                                           "model_dir": str(example.resolve())}
    assert engine_options("torch", tok) == {"eos_id": tok.stop_ids}
    assert engine_options("vllm", load_tokenizer("bytes")) == {"stop_ids": [257]}
    kw = sampling_kwargs(Request(0, [1, 2], 8), max_len=32, temperature=1.0, seed=0,
                         stop_ids=tok.stop_ids)
    assert kw["stop_token_ids"] == tok.stop_ids
