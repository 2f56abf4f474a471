"""Decoding with a static K/V cache: buffers allocated once, every step the same shapes. GPT generation
(``StaticDecoder``) and the encoder-decoder's greedy and beam search (``StaticSeq2Seq``).

Why: one decoding step of a small model is bound by Python and kernel launches rather than arithmetic
(GPT-2 124M at batch 1 on a GPU: about 170 steps/s eager, where its memory bandwidth allows thousands).
``torch.compile`` with CUDA graphs (``mode="reduce-overhead"``) replays a whole step as one launch, but
only when every step has the same shapes and buffer addresses; the growing cache
(``nn.kv_cache.AttentionCache``) changes shape every step. Here each layer's keys and values live in
buffers of a fixed number of slots (``nn.kv_cache.StaticKVCache``; what the generation needs, up to the
context): a step writes its slot, and attends over every slot under a mask that hides the slots not written yet and the prompt's left padding. The prompt
runs eagerly (its length varies); the one-token steps run through one function, compiled when asked
(on a GPU with CUDA graphs). Same tokens as the growing cache: ``tests/generation/test_static_decoding.py``.

The encoder-decoder (``StaticSeq2Seq``) keeps one set of buffers for a whole translation call: rows for
the largest batch times the beam, source slots for the longest source, target slots for the longest
output. A batch's first step (every row's <s>) runs eagerly through ``Transformer.decode`` with the growing
cache; its keys and values, and the encoder's (cross-attention, computed once), are copied into the
buffers, and every later step is the one compiled function. A smaller batch leaves filler rows (computed,
never read); a shorter source, masked slots. Beam search's reorder copies the kept beams' rows in place
(the buffers never move); the encoder's keys stay put while each beam stays within its sentence.
Same tokens as ``Seq2SeqStep``: ``tests/generation/test_static_seq2seq.py``.

Supported: full causal attention with learned, sinusoidal or rotary positions, no prefix or soft prompt;
anything else is refused by name (generate it with the growing cache). Each batch size and slot count is
its own compiled graph (static shapes): Dynamo's recompile limit (8 per function) bounds how many one
process compiles; later ones run eagerly, with Dynamo's warning. Shapes: B rows, T new tokens,
L slots, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_lab.generation.search import without_padding
from transformer_lab.models.gpt import GPT
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.embeddings import check_tokens
from transformer_lab.nn.kv_cache import AttentionCache, DecoderCache, StaticKVCache
from transformer_lab.nn.masks import cross_attention_mask

POSITIONS = ("learned", "sinusoidal", "rotary")  # encodings that need no key positions in the cache


def static_cache_problems(model: GPT | Transformer) -> list[str]:
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
        _refuse(static_cache_problems(model), "generate")
        c = model.config
        device, dtype = _device_dtype(model)
        b, p = prompt_mask.shape
        if p > c.max_len:
            raise ValueError(f"prompt: {p} tokens, but the model's context is max_len={c.max_len}")
        slots = c.max_len if length is None else _round_up(max(length, p), SLOT_BLOCK, c.max_len)
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


def _refuse(problems: list[str], command: str) -> None:
    if problems:
        raise ValueError("static K/V cache: not for this model: " + "; ".join(problems)
                         + f"; {command} without --static-cache/--compile (the growing cache)")


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The model's device, and the dtype its keys and values come out in: under autocast, autocast's
    (the buffers take it: half the bytes read a step)."""
    param = next(model.parameters())
    device = param.device
    return device, torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else param.dtype


def _round_up(n: int, block: int, cap: int) -> int:
    return min(cap, -(-n // block) * block)


class StaticSeq2Seq:
    """Static buffers and the compiled one-token step for one translation call of ``model``: at most
    ``rows`` rows (batch size x beam), sources of at most ``src_len`` tokens, prefixes of at most ``tgt_len``
    positions (<s> included: outputs of at most ``tgt_len`` tokens). Source slots are rounded up to 16
    and target slots to 32 (at most the model's max_len), and ``translate_detailed`` rounds the rows,
    so calls of similar sizes share the compiled step (each new size is a compile: Dynamo's limit is 8).
    ``step(src)`` starts a batch: a ``Step`` for ``greedy_search`` / ``beam_search``. One batch at a
    time: a new one takes the buffers."""

    def __init__(self, model: Transformer, rows: int, src_len: int, tgt_len: int, compile: bool = False):
        _refuse(static_cache_problems(model), "translate or evaluate")
        c = model.config
        if min(rows, src_len, tgt_len) < 1:
            raise ValueError(f"rows, src_len, tgt_len: expected >= 1, got {rows}, {src_len}, {tgt_len}")
        if max(src_len, tgt_len) > c.max_len:
            raise ValueError(f"src_len, tgt_len: {src_len}, {tgt_len} exceed the model's max_len={c.max_len}")
        device, dtype = _device_dtype(model)
        self.model, self.rows = model, rows
        self.src_slots, self.tgt_slots = _round_up(src_len, 16, c.max_len), _round_up(tgt_len, 32, c.max_len)
        h, d_head = c.n_heads, c.d_model // c.n_heads
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # the position a step writes, in place
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)  # the step's input tokens, in place
        self.self_attn = [StaticKVCache(rows, h, self.tgt_slots, d_head, dtype, device) for _ in range(c.n_decoder_layers)]
        for cache in self.self_attn:
            cache.slots = self.slot
        self.cross_attn = [AttentionCache(static=True, k=torch.zeros(rows, h, self.src_slots, d_head, dtype=dtype, device=device))
                           for _ in range(c.n_decoder_layers)]
        for cache in self.cross_attn:
            cache.v = torch.zeros_like(cache.k)
        self.cross_mask = torch.ones(rows, 1, 1, self.src_slots, dtype=torch.bool, device=device)  # True: a real source token
        self.slot_index = torch.arange(self.tgt_slots, device=device)
        self.memory = torch.zeros(1, 1, c.d_model, dtype=dtype, device=device).expand(rows, 1, -1)  # (shape checks only)
        self.pad = torch.tensor([c.pad_id], device=device)
        self.cuda_graphs = compile and device.type == "cuda"
        if self.cuda_graphs:  # CUDA graphs replay fixed addresses: these buffers never move
            for t in (self.slot, self.tokens, self.cross_mask, *(x for a in self.cross_attn for x in (a.k, a.v))):
                torch._dynamo.mark_static_address(t)
        self.run = (torch.compile(self._forward, dynamic=False, mode="reduce-overhead" if self.cuda_graphs else None)
                    if compile else self._forward)

    def step(self, src: Tensor) -> "StaticSeq2SeqStep":
        return StaticSeq2SeqStep(self, src)

    def _forward(self) -> Tensor:
        """Every buffer row's next-token log-probabilities (rows, V) after ``tokens`` at position ``slot``."""
        m = self.model
        x = m.tgt_embed(self.tokens, self.slot)  # (N, 1, D)
        self_mask = (self.slot_index <= self.slot)[None, None, None, :]  # (1, 1, 1, L): the slots written so far
        cache = DecoderCache(self.self_attn, self.cross_attn)
        h = m.decoder(x, self.memory, self_mask, self.cross_mask, self.slot, False, cache)
        return without_padding(m.generator(h[:, -1]), self.pad)


class StaticSeq2SeqStep:
    """One batch's decoding steps over ``StaticSeq2Seq``'s buffers (the ``Step`` protocol of
    ``generation.search``). Shapes: src (B, S); after ``expand(k)``, N = B·k rows in use."""

    def __init__(self, engine: StaticSeq2Seq, src: Tensor):
        if src.size(1) > engine.src_slots:
            raise ValueError(f"src: {src.size(1)} tokens exceed the {engine.src_slots} source slots")
        self.engine, self.src = engine, src
        self.memory = engine.model.encode(src)  # (B, S, D), checks the ids
        self.sentence = torch.arange(src.size(0), device=src.device)  # the sentence each row decodes
        self.filled = 0
        self._check_rows()

    @property
    def n(self) -> int:
        return self.src.size(0)

    def _check_rows(self) -> None:
        if self.n > self.engine.rows:
            raise ValueError(f"src: {self.n} rows (sentences x beam) exceed the static cache's {self.engine.rows}")

    def expand(self, k: int) -> None:
        if self.filled:
            raise ValueError("expand: only before the first step")
        self.memory, self.src = self.memory.repeat_interleave(k, 0), self.src.repeat_interleave(k, 0)
        self.sentence = self.sentence.repeat_interleave(k)
        self._check_rows()

    def __call__(self, prefixes: Tensor) -> Tensor:
        e, n = self.engine, self.n
        if prefixes.shape != (n, self.filled + 1):
            raise ValueError(f"prefixes: expected ({n}, {self.filled + 1}) after {self.filled} steps, "
                             f"got {tuple(prefixes.shape)}")
        if self.filled >= e.tgt_slots:
            raise ValueError(f"prefixes: {self.filled + 1} positions exceed the {e.tgt_slots} target slots")
        if not self.filled:
            logp = self._first(prefixes)
        else:
            check_tokens(prefixes[:, -1:], e.model.config.tgt_vocab_size, "prefixes")  # as Transformer.decode does
            e.tokens[:n].copy_(prefixes[:, -1:])
            e.slot.fill_(self.filled)
            if e.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            logp = e.run()[:n]
            logp = logp.clone() if e.cuda_graphs else logp  # (a CUDA graph's output is overwritten next step)
        self.filled += 1
        return logp

    def _first(self, prefixes: Tensor) -> Tensor:
        """The <s> step, eagerly with the growing cache; its keys and values, and the encoder's, go into
        the buffers."""
        e, m, n, s = self.engine, self.engine.model, self.n, self.src.size(1)
        cache = m.new_cache()
        h = m.decode(self.memory, self.src, prefixes, cache=cache)
        for static, grown in zip(e.self_attn, cache.self_attn):
            static.k[:n, :, :1], static.v[:n, :, :1] = grown.k, grown.v
        for static, grown in zip(e.cross_attn, cache.cross_attn):
            static.k[:n, :, :s], static.v[:n, :, :s] = grown.k, grown.v
            static.k[:n, :, s:], static.v[:n, :, s:] = 0, 0
        e.cross_mask[:n] = False
        e.cross_mask[:n, ..., :s] = cross_attention_mask(self.src, m.config.pad_id)
        return without_padding(m.generator(h[:, -1]), e.pad)

    def reorder(self, index: Tensor) -> None:
        """Row i continues row ``index[i]``: copied in place. The encoder's keys and values are moved
        only when a row changes sentence (beam search's reorders never do)."""
        e, n, t = self.engine, self.n, self.filled
        if index.shape != (n,):
            raise ValueError(f"index: expected ({n},) rows, got {tuple(index.shape)}")
        for cache in e.self_attn:  # the slots written so far
            k, v = cache.k[:, :, :t], cache.v[:, :, :t]
            k[:n], v[:n] = k.index_select(0, index), v.index_select(0, index)
        sentence = self.sentence.index_select(0, index)
        if not torch.equal(sentence, self.sentence):
            for cache in e.cross_attn:
                cache.k[:n], cache.v[:n] = cache.k.index_select(0, index), cache.v.index_select(0, index)
            e.cross_mask[:n] = e.cross_mask.index_select(0, index)
            self.memory, self.src = self.memory.index_select(0, index), self.src.index_select(0, index)
        self.sentence = sentence
