"""Left-to-right generation for decoder-only models: greedy, temperature, top-k, top-p (nucleus).

One step: logits of the last position -> divide by the temperature -> keep the k most likely
tokens (top-k) -> keep the smallest set whose probability reaches p (top-p) -> sample (or argmax
when greedy). A row stops at the end-of-sequence token; the loop stops when every row has.

Batched prompts of different lengths are left-padded, so every row's next token sits in the last
column; the attention mask hides the padding and positions count from each row's first real token
(``positions_from_mask``), which makes a padded row compute what it would alone. Not under a
block-sparse pattern (``--attention block:B``): its blocks are laid out by column, and BigBird's
random blocks depend on the length, so such a model takes prompts of one length per call
(``tasks.lm.sample`` groups them).

The K/V cache makes each step one token's work. Once prompt + output fills the context (``max_len``)
the window slides as in nanoGPT: the oldest token drops out and the window is recomputed, without
cache, at every later step. Only the window is kept, so generation can run on (``on_step`` streams
it) at a bounded cost per token.

Shapes: B prompts, P padded prompt length, N new tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from transformer_lab.generation.static_decoding import StaticDecoder
from transformer_lab.models.gpt import GPT
from transformer_lab.nn.sparse import parse_pattern


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 100
    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None  # None or 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    eos_id: int | None = None  # None: the model's config.eos_id
    stop_at_eos: bool = True  # False: always generate max_new_tokens (benchmarks)
    use_cache: bool = True
    # K/V in buffers allocated once, every step the same shapes (generation/static_decoding.py); with
    # ``compile`` the one-token step runs under torch.compile (CUDA graphs on a GPU). Compile implies static.
    static_cache: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if (self.static_cache or self.compile) and not self.use_cache:
            raise ValueError("static_cache/compile (--static-cache/--compile): they decode with a K/V cache; "
                             "use_cache=False (--no-cache) recomputes the prefix")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature: expected a finite number > 0, got {self.temperature} (use greedy for argmax "
                             "decoding)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected 0 < p <= 1, got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0 (0 or None: off), got {self.top_k}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float = 1.0) -> Tensor:
    """Set every token outside the top-k, and outside the nucleus of mass top_p, to -inf.
    The most likely token always survives. Shapes: (B, V) -> (B, V)."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach p (so the first always stays)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """Shapes: logits (B, V) -> (B,) token ids."""
    if cfg.greedy:
        return logits.argmax(-1)
    # (shifted so the largest is 0 first: a tiny temperature then sends the others to -inf, not inf - inf = NaN;
    # in float64, where a temperature of 1e-46 is not 0 as it is in float32)
    logits = logits.double()
    logits = filter_logits((logits - logits.amax(-1, keepdim=True)) / cfg.temperature, cfg.top_k, cfg.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Prompts as one left-padded tensor. Returns tokens (B, P) and mask (B, P), True = real."""
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: an empty prompt has nothing to continue from; give at least one token "
                         "(e.g. the end-of-text token, as GPT-2 does for unconditional samples)")
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = True
    return tokens, mask


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per prompt, up to and including the end token if reached
    logits: Tensor | None = None  # (B, N, V) step logits, when asked for (tests)


@torch.no_grad()
def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig = SamplingConfig(),
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    on_step: Callable[[Tensor], None] | None = None,
) -> Generation:
    """Continue each prompt (a list of token ids) by up to ``cfg.max_new_tokens`` tokens.
    ``on_step(tokens)`` receives each step's new tokens (B,) as they are chosen (streaming output,
    progress); a row that has ended repeats the end token."""
    model.eval()
    max_len = model.context  # tokens seen at once: max_len less a prefix's or soft prompt's positions
    too_long = [len(p) for p in prompts if len(p) > max_len]
    if too_long:
        raise ValueError(f"prompt: {max(too_long)} tokens, but the model's context is max_len={max_len}; "
                         f"shorten the prompt (keep its last {max_len} tokens)")
    eos = stop_token(model, cfg)
    device = next(model.parameters()).device
    tokens, mask = (t.to(device) for t in left_pad(prompts))
    b = tokens.size(0)
    padded = not bool(mask.all())  # prompts of one length need no padding mask (a cheaper step)
    if padded and not pads_exactly(model):
        raise ValueError(f"prompts: lengths {sorted({len(p) for p in prompts})} under the block-sparse pattern "
                         f"{model.config.attention!r}, whose blocks follow the padded columns: a padded prompt would "
                         "not see what it sees alone; generate prompts of one length per call")
    static = (StaticDecoder(model, mask, cfg.compile, length=tokens.size(1) + cfg.max_new_tokens)
              if cfg.static_cache or cfg.compile else None)
    cache = model.new_cache() if cfg.use_cache and static is None else None
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out: list[Tensor] = []
    step_logits: list[Tensor] = []
    new_tokens = tokens  # what this step feeds the model (the whole prompt, then one token)
    for _ in range(cfg.max_new_tokens):
        if static is not None and static.fits(new_tokens.size(1)):
            logits = static(new_tokens)  # (B, V)
        elif cache is not None and cache[0].length + new_tokens.size(1) <= model.config.max_len:  # virtual ones too
            logits = model(new_tokens, mask if padded else None, cache=cache, last_only=True)[:, -1]  # (B, V)
        else:
            # no cache, or the context is full: recompute on the last max_len tokens (nanoGPT's crop)
            cache = static = None
            window_tokens, window_mask = tokens[:, -max_len:], mask[:, -max_len:]
            logits = model(window_tokens, window_mask if padded else None, last_only=True)[:, -1]
        if return_logits:
            step_logits.append(logits.float())
        nxt = next_token(logits, cfg, generator)
        if eos is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        out.append(nxt)
        if on_step is not None:
            on_step(nxt)
        # Only the last max_len tokens are ever read again: keep no more, so a step's cost and the
        # memory stay bounded however many tokens are generated.
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)[:, -max_len:]
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=device)], dim=1)[:, -max_len:]
        new_tokens = nxt[:, None]
        if eos is not None:
            done |= nxt == eos
            if bool(done.all()):
                break
    result = cut_at_eos(out, eos)
    return Generation(result, torch.stack(step_logits, 1) if return_logits else None)


def pads_exactly(model: GPT) -> bool:
    """Whether a left-padded row computes what it would alone: every pattern but block-sparse's."""
    pattern = parse_pattern(model.config.attention, causal=True)
    return pattern is None or pattern.kind != "block"


def stop_token(model: GPT, cfg: SamplingConfig) -> int | None:
    """The token that ends a row: the config's, else the model's; None when generation never stops early."""
    if not cfg.stop_at_eos:
        return None
    return cfg.eos_id if cfg.eos_id is not None else model.config.eos_id


def cut_at_eos(steps: Sequence[Tensor], eos: int | None) -> list[list[int]]:
    """Per row, the tokens of ``steps`` (each (B,)) up to and including the first end token."""
    if not steps:
        return []
    result = []
    for row in torch.stack(list(steps), dim=1).tolist():  # (B, N)
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        result.append(row)
    return result
