"""The embedded engine: our GPT, a preallocated KV cache, continuous batching.

A fixed number of slots (``max_batch``) share one ``KVCache``. Each ``step()``:

1. Admission (the only Python loop over requests): waiting requests take free slots.
   Each distinct prompt minus its last token is prefilled once, all of this step's in
   one batched forward; requests with the same prompt (a GRPO group) copy its keys and
   values. The last prompt token becomes the slot's pending input. With
   ``continuous=False`` (static batching) requests are admitted only once every slot is
   free, so a batch runs as long as its longest member.
2. Decode: the pending tokens of all active slots go through ONE batched
   ``GPT.forward_cached`` (each slot at its own position). A token is sampled per slot
   (seeded ``torch.Generator``; greedy at temperature 0), and its log-prob under the
   distribution it was sampled from, ``log_softmax(logits / T)`` (the behaviour policy
   a trainer's importance ratio divides by: the trainer recomputes it with the same T;
   greedy decoding reports the plain log-softmax), and the current policy version are
   written into preallocated per-slot tensors. The
   stop test (any of the stop ids, max_new_tokens, cache length) is vectorized; only the
   slots that finished are read back into Python to build their ``Completion``.

Stop ids: ``eos_id`` is one id or several. A chat model ends a turn with a token of its
template (Qwen's ``<|im_end|>``, Llama 3's ``<|eot_id|>``) besides its EOS, and a
generator passes the tokenizer's ``stop_ids``: the sequence stops at the first of any.

Because every generated token (the first one too) comes out of the batched decode, a
weight update lands cleanly between two steps: ``load_weights`` copies the new tensors
into the model's parameters in place and bumps ``version``; the KV cache of the sequences
in flight is kept as is (computed by the old weights, not recomputed), and their next
tokens are tagged with the new version.

Determinism: the same requests added in the same order, with the same seed, give the
same completions. Under greedy decoding a request's tokens do not depend on what else
is in the batch (slots never see each other), so continuous, static and one-at-a-time
generation agree (up to float rounding ties).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from workbench.data.corpus import EOS
from workbench.engine.types import Completion, Request
from workbench.models.gpt import GPT, KVCache

_PREFIXES = ("_orig_mod.", "module.")  # torch.compile / DDP wrappers in a trainer's keys


class TorchEngine:
    """Continuous-batching generation over ``max_batch`` KV-cache slots (see module doc)."""

    def __init__(self, model: GPT, *, max_batch: int, max_len: int, temperature: float = 1.0,
                 seed: int = 0, device: str | torch.device = "cpu", continuous: bool = True,
                 eos_id: int | Sequence[int] = EOS, ignore_eos: bool = False,
                 version: int = 0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch ({max_batch}) must be >= 1")
        if not 2 <= max_len <= model.config.seq_len:
            raise ValueError(f"max_len ({max_len}) must be in [2, model seq_len "
                             f"({model.config.seq_len})]")
        if temperature < 0:
            raise ValueError(f"temperature ({temperature}) must be >= 0")
        self.device = torch.device(device)
        # The model is used in place (no copy): load_weights writes into it.
        self.model = model.to(self.device).eval()
        self.max_batch, self.max_len = max_batch, max_len
        self.temperature = float(temperature)
        self.continuous = continuous
        self.eos_id = eos_id
        self.stop_ids = ([int(i) for i in eos_id] if isinstance(eos_id, Sequence)
                         else [int(eos_id)])
        if not self.stop_ids and not ignore_eos:
            raise ValueError("eos_id: give at least one stop id (or ignore_eos=True)")
        self._stop = torch.tensor(self.stop_ids, dtype=torch.long, device=self.device)
        self.ignore_eos = ignore_eos
        self.version = int(version)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        dtype = next(model.parameters()).dtype
        self.cache = KVCache.empty(model.config, max_batch, max_len, self.device, dtype)

        dev = self.device
        self._pending = torch.zeros(max_batch, dtype=torch.long, device=dev)  # next input
        self._tokens = torch.zeros(max_batch, max_len, dtype=torch.long, device=dev)
        self._logprobs = torch.zeros(max_batch, max_len, dtype=torch.float32, device=dev)
        self._versions = torch.zeros(max_batch, max_len, dtype=torch.long, device=dev)
        self._n_gen = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self._limit = torch.zeros(max_batch, dtype=torch.long, device=dev)  # max tokens
        self._slot_req: list[Request | None] = [None] * max_batch
        self._n_active = 0  # active sequences live in slots 0..n_active-1 (kept packed)
        self._arange = torch.arange(max_batch, device=dev)
        self._waiting: deque[Request] = deque()
        self._ids: set[int] = set()
        # Counters (tests and benches read them).
        self.prefills = 0
        self.prefill_tokens = 0
        self.decode_steps = 0
        self.tokens_generated = 0
        self.weight_loads = 0

    # ------------------------------------------------------------------ interface

    def add(self, req: Request) -> None:
        """Queue ``req``; it is prefilled when a slot frees (``step`` admits)."""
        if req.id in self._ids:
            raise ValueError(f"request id {req.id} is already queued or running")
        if not req.prompt:
            raise ValueError(f"request {req.id}: empty prompt (start it with BOS)")
        if len(req.prompt) >= self.max_len:
            raise ValueError(f"request {req.id}: prompt of {len(req.prompt)} tokens leaves no "
                             f"room in max_len ({self.max_len})")
        if req.max_new_tokens < 1:
            raise ValueError(f"request {req.id}: max_new_tokens ({req.max_new_tokens}) < 1")
        self._ids.add(req.id)
        self._waiting.append(req)

    def step(self, admit: bool = True) -> list[Completion]:
        """Admit waiting requests (unless ``admit`` is False), decode one token for every
        active sequence, and return those that finished."""
        if admit:
            self._admit()
        if not self._n_active:
            return []
        return self._decode()

    def has_work(self) -> bool:
        return bool(self._n_active or self._waiting)

    def num_active(self) -> int:
        return self._n_active

    def slot_of(self, req_id: int) -> int | None:
        """The slot request ``req_id`` occupies now (slots move when others finish)."""
        for slot in range(self._n_active):
            req = self._slot_req[slot]
            if req is not None and req.id == req_id:
                return slot
        return None

    def num_waiting(self) -> int:
        return len(self._waiting)

    @torch.no_grad()
    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Copy ``state`` into the model's parameters in place; later tokens carry
        ``version``. The KV cache is NOT recomputed (in-flight update)."""
        clean = {}
        for name, tensor in state.items():
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
            clean[name] = tensor
        if self.model.config.tie_embeddings and "lm_head.weight" not in clean:
            clean["lm_head.weight"] = clean.get("embed.weight")  # tied: one tensor, two keys
        self.model.load_state_dict(clean, strict=True)  # param.copy_(...): in place
        self.version = int(version)
        self.weight_loads += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the current weights (safe to send or keep)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------ internals

    def _admit(self) -> None:
        if not self._waiting:
            return
        if not self.continuous and self._n_active:
            return  # static batching: wait for the whole batch to finish
        new: list[tuple[int, Request]] = []
        while self._waiting and self._n_active < self.max_batch:
            new.append((self._n_active, self._waiting.popleft()))
            self._n_active += 1
        self._prefill(new)

    @torch.no_grad()
    def _prefill(self, new: list[tuple[int, Request]]) -> None:
        """Prefill the admitted (slot, request) pairs: each distinct prompt (minus its last
        token) once, all in ONE batched forward, right-padded; a GRPO group's G copies
        of a prompt then take an exact copy of its keys and values. Padding positions
        past a prompt's length are left stale: masked, and overwritten by the next token
        before any query can see them."""
        first: dict[tuple[int, ...], int] = {}  # prompt -> the slot that computes it
        for slot, req in new:
            first.setdefault(tuple(req.prompt[:-1]), slot)
        for slot, _ in new:
            self.cache.lengths[slot] = 0
        todo = [(slot, prefix) for prefix, slot in first.items() if prefix]
        if todo:
            width = max(len(prefix) for _, prefix in todo)
            idx = torch.zeros(len(todo), width, dtype=torch.long)
            for row, (_, prefix) in enumerate(todo):
                idx[row, :len(prefix)] = torch.tensor(prefix)
            rows = torch.tensor([slot for slot, _ in todo], device=self.device)
            self.model.forward_cached(idx.to(self.device), self.cache, rows,
                                      return_logits=False)
            for slot, prefix in todo:
                self.cache.lengths[slot] = len(prefix)
        for slot, req in new:
            prefix = tuple(req.prompt[:-1])
            src = first[prefix]
            if src != slot:
                self._copy_kv(src, slot)
                self.cache.lengths[slot] = len(prefix)
            self.prefills += 1
            self.prefill_tokens += len(prefix)
            self._pending[slot] = req.prompt[-1]
            self._n_gen[slot] = 0
            # Stop once max_new_tokens are out or prompt + completion fills max_len.
            self._limit[slot] = min(req.max_new_tokens, self.max_len - len(req.prompt))
            self._slot_req[slot] = req

    @torch.no_grad()
    def _decode(self) -> list[Completion]:
        n = self._n_active
        # Active slots are 0..n-1: the cache is read as a view, never gathered.
        logits = self.model.forward_cached(self._pending[:n].unsqueeze(1), self.cache)
        logits = logits[:, -1].float()
        if self.temperature == 0:
            tok = logits.argmax(dim=-1)
            logp = F.log_softmax(logits, dim=-1)  # greedy: no distribution; report T = 1
        else:
            scaled = logits / self.temperature
            probs = F.softmax(scaled, dim=-1)
            tok = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
            logp = F.log_softmax(scaled, dim=-1)  # of the distribution just sampled
        lp = logp.gather(1, tok.unsqueeze(1)).squeeze(1)

        rows, count = self._arange[:n], self._n_gen[:n]
        self._tokens[rows, count] = tok
        self._logprobs[rows, count] = lp
        self._versions[rows, count] = self.version
        count += 1  # in place: _n_gen[:n] is a view
        self._pending[:n] = tok
        self.decode_steps += 1
        self.tokens_generated += n

        done = count >= self._limit[:n]
        if not self.ignore_eos:
            done |= torch.isin(tok, self._stop)
        if not bool(done.any()):
            return []
        slots = done.nonzero().flatten().tolist()
        finished = [self._complete(s) for s in slots]
        for slot in reversed(slots):  # keep the active slots packed at 0..n-1
            last = self._n_active - 1
            if slot != last:
                self._move(last, slot)
            self._slot_req[last] = None
            self._n_active -= 1
        return finished

    def _complete(self, slot: int) -> Completion:
        req = self._slot_req[slot]
        assert req is not None
        k = int(self._n_gen[slot])
        tokens = self._tokens[slot, :k].tolist()
        stop = not self.ignore_eos and tokens[-1] in self.stop_ids
        self._ids.discard(req.id)
        return Completion(id=req.id, prompt=list(req.prompt), meta=req.meta, tokens=tokens,
                          logprobs=self._logprobs[slot, :k].tolist(),
                          versions=self._versions[slot, :k].tolist(),
                          finish="stop" if stop else "length")

    def _move(self, src: int, dst: int) -> None:
        """Move a running sequence from slot src to the freed slot dst: its cached keys
        and values (an exact copy, not a recomputation) and its bookkeeping. Runs once
        per finished sequence, so the per-step decode never gathers scattered slots."""
        self._copy_kv(src, dst)
        for t in (self.cache.lengths, self._pending, self._n_gen, self._limit, self._tokens,
                  self._logprobs, self._versions):
            t[dst] = t[src]
        self._slot_req[dst] = self._slot_req[src]

    def _copy_kv(self, src: int, dst: int) -> None:
        """Slot src's cached keys and values, up to its length, into slot dst."""
        length = int(self.cache.lengths[src])
        for k_cache, v_cache in zip(self.cache.k, self.cache.v, strict=True):
            k_cache[dst, :, :length] = k_cache[src, :, :length]
            v_cache[dst, :, :length] = v_cache[src, :, :length]
