"""Decoder-only generation with a static K/V cache: buffers allocated once, every step the same shapes.

Why: one decoding step of a small model is bound by Python and kernel launches rather than arithmetic
(GPT-2 124M at batch 1 on a GPU: about 170 steps/s eager, where its memory bandwidth allows thousands).
``torch.compile`` with CUDA graphs (``mode="reduce-overhead"``) replays a whole step as one launch, but
only when every step has the same shapes and buffer addresses; the growing cache
(``nn.kv_cache.AttentionCache``) changes shape every step. Here each layer's keys and values live in
buffers of a fixed number of slots (``nn.kv_cache.StaticKVCache``; what the generation needs, up to the
context): a step writes its slot, and attends over every slot under a mask that hides the slots not written yet and the prompt's left padding. The prompt
runs eagerly (its length varies); the one-token steps run through one function, compiled when asked
(on a GPU with CUDA graphs). Same tokens as the growing cache: ``tests/generation/test_static_decoding.py``.

Supported: full causal attention with learned, sinusoidal or rotary positions, no prefix or soft prompt;
anything else is refused by name (generate it with the growing cache). Each batch size and slot count is
its own compiled graph (static shapes): Dynamo's recompile limit (8 per function) bounds how many one
process compiles; later ones run eagerly, with Dynamo's warning. Shapes: B rows, T new tokens,
L slots, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_lab.models.gpt import GPT
from transformer_lab.nn.embeddings import check_tokens
from transformer_lab.nn.kv_cache import StaticKVCache

POSITIONS = ("learned", "sinusoidal", "rotary")  # encodings that need no key positions in the cache


def static_cache_problems(model: GPT) -> list[str]:
    """What keeps ``model`` from decoding with a static cache (empty: nothing)."""
    c, problems = model.config, []
    if c.position not in POSITIONS:
        problems.append(f"position {c.position!r} biases scores by distance (static decoding takes {', '.join(POSITIONS)})")
    if c.attention != "full":
        problems.append(f"attention pattern {c.attention!r} (static decoding takes full attention)")
    if model.prefix is not None or model.prompt is not None:
        problems.append("a prefix or soft prompt (virtual positions)")
    return problems


SLOT_BLOCK = 128  # slot counts are rounded up to this: generations of similar lengths share a compiled step


class StaticDecoder:
    """One generation's static caches and its step. ``prompt_mask`` (B, P) bool, True = real token (left
    padding); ``compile``: the one-token step under torch.compile (``reduce-overhead`` on CUDA);
    ``length``: the most positions the generation will need (prompt + new tokens): the buffers take that,
    rounded up to ``SLOT_BLOCK``, at most the context (every step attends over every slot, so slots
    beyond the need would only cost reads); None: the whole context."""

    def __init__(self, model: GPT, prompt_mask: Tensor, compile: bool = False, length: int | None = None):
        problems = static_cache_problems(model)
        if problems:
            raise ValueError("static K/V cache: not for this model: " + "; ".join(problems)
                             + "; generate without --static-cache/--compile (the growing cache)")
        c = model.config
        param = next(model.parameters())
        device = param.device
        # under autocast keys and values come out in its dtype: the buffers take it (half the bytes read a step)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else param.dtype
        b, p = prompt_mask.shape
        if p > c.max_len:
            raise ValueError(f"prompt: {p} tokens, but the model's context is max_len={c.max_len}")
        slots = c.max_len if length is None else min(c.max_len, -(-max(length, p) // SLOT_BLOCK) * SLOT_BLOCK)
        self.model, self.slots, self.filled = model, slots, 0
        self.caches = [StaticKVCache(b, c.n_heads, slots, c.d_model // c.n_heads, dtype, device)
                       for _ in range(c.n_layers)]
        prompt_mask = prompt_mask.to(device)
        self.key_valid = torch.ones(b, slots, dtype=torch.bool, device=device)  # (B, L)
        self.key_valid[:, :p] = prompt_mask
        self.n_pad = (~prompt_mask).sum(-1, keepdim=True)  # (B, 1)
        self.slot_index = torch.arange(slots, device=device)  # (L,)
        self._slot = torch.zeros(1, dtype=torch.long, device=device)  # the one-token steps' slot, in place
        self.cuda_graphs = compile and device.type == "cuda"
        self._step = (torch.compile(self._forward, dynamic=False, mode="reduce-overhead" if self.cuda_graphs else None)
                      if compile else self._forward)

    def fits(self, n_new: int) -> bool:
        """Whether ``n_new`` more tokens fit in the slots."""
        return self.filled + n_new <= self.slots

    def __call__(self, tokens: Tensor) -> Tensor:
        """The last position's logits (B, V) after ``tokens`` (B, T): the prompt first, then a token a step."""
        t = tokens.size(1)
        if t > 1 or not self.filled:  # the prompt: its ids are checked here (sampled ones are in range)
            check_tokens(tokens, self.model.config.vocab_size)
        if not self.fits(t):
            raise ValueError(f"tokens: {self.filled} decoded + {t} new exceed the {self.slots} slots")
        if t == 1 and self.filled:
            self._slot.fill_(self.filled)
            slots, run = self._slot, self._step
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
        else:
            slots, run = torch.arange(self.filled, self.filled + t, device=tokens.device), self._forward
        for cache in self.caches:
            cache.slots = slots
        self.filled += t
        logits = run(tokens, slots)
        return logits.clone() if self.cuda_graphs else logits  # (a CUDA graph's output is overwritten next step)

    def _forward(self, tokens: Tensor, slots: Tensor) -> Tensor:
        m = self.model
        positions = (slots[None, :] - self.n_pad).clamp(min=0)  # (B, T): from each row's first real token
        visible = self.slot_index[None, :] <= slots[:, None]  # (T, L): written slots up to the query's own
        mask = visible[None, None] & self.key_valid[:, None, None, :]  # (B, 1, T, L)
        x = m.blocks(m.embed(tokens, positions), mask, positions, self.caches)
        return m.lm_head(x[:, -1:])[:, -1]  # (B, V)
