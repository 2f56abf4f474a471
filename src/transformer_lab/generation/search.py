"""Greedy and beam search for the encoder-decoder, batched, over a "step" interface.

A step scores the next token of every prefix in the batch: ``step(prefixes) -> (N, V) log-probs``.
``Seq2SeqStep`` runs our model (encoder once; decoder incrementally with a KV cache, or over the whole
prefix without one); a hand-built step with known probabilities tests the search itself.

Beam search (§6.1: beam 4, length penalty α = 0.6, maximum output length = input length + 50):
keep the K best prefixes of each sentence by total log-probability; at each step extend every prefix
by every token and keep the K best non-final extensions, setting aside extensions that end with </s>
as finished hypotheses (only those ranked within the top K, so a finished one never displaces a
better live beam). A sentence is done when it has K finished hypotheses, or at its maximum length
(live beams then count as finished). The answer is the finished hypothesis with the best
length-normalised score log P(Y) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^α (Wu et al. 2016), |Y| counting
the generated tokens including </s>. Without normalisation, beam search prefers short outputs.

Shapes: B sentences, K beams, N = B·K rows, V vocabulary, S source length, t prefix length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from transformer_lab.models.transformer import Transformer


class Step(Protocol):
    def __call__(self, prefixes: Tensor) -> Tensor: ...  # (N, t) -> (N, V) log-probs

    def expand(self, k: int) -> None: ...  # repeat every row k times, in place

    def reorder(self, index: Tensor) -> None: ...  # keep rows ``index``, in that order


def without_padding(logp: Tensor, pad: Tensor) -> Tensor:
    """``logp`` (N, V) with padding made impossible: a generated pad would be masked out of the decoder's
    own keys on the next step. ``pad``: (1,) the pad id, on ``logp``'s device."""
    return logp.index_fill(1, pad, float("-inf"))


class Seq2SeqStep:
    """Next-token log-probabilities from our encoder-decoder for a batch of sources."""

    def __init__(self, model: Transformer, src: Tensor, use_cache: bool = True, record_cross_attention: bool = False):
        self.model, self.src = model, src
        self.memory = model.encode(src)  # (B, S, D), once
        self.cache = model.new_cache() if use_cache else None
        self.record = record_cross_attention
        self.sentence = torch.arange(src.size(0), device=src.device)  # the sentence each row decodes
        self.pad = torch.tensor([model.config.pad_id], device=src.device)
        self.cross_attention: list[Tensor] = []  # per step, last layer (N, H, 1, S), when recording

    def __call__(self, prefixes: Tensor) -> Tensor:
        if self.cache is not None:
            if self.cache.length != prefixes.size(1) - 1:
                raise ValueError(f"prefixes: cache holds {self.cache.length} positions, prefix has {prefixes.size(1)}")
            h = self.model.decode(self.memory, self.src, prefixes[:, -1:], cache=self.cache,
                                  record_cross_attention=self.record)
        else:
            h = self.model.decode(self.memory, self.src, prefixes, record_cross_attention=self.record)
        if self.record:
            self.cross_attention.append(self.model.decoder.layers[-1].cross_weights[:, :, -1:])
        return without_padding(self.model.generator(h[:, -1]), self.pad)  # (N, V)

    def expand(self, k: int) -> None:
        self.reorder(torch.arange(self.src.size(0), device=self.src.device).repeat_interleave(k))

    def reorder(self, index: Tensor) -> None:
        """Row i continues row ``index[i]``. When every row keeps decoding the same sentence (beam
        search's reorders only shuffle a sentence's beams), the encoder's side (memory, source,
        cross-attention K/V) is already right and is not copied: only the decoder's own K/V. Recorded
        cross-attention follows its rows, so each row's record is its own hypothesis's."""
        sentence = self.sentence.index_select(0, index)
        self.cross_attention = [w.index_select(0, index) for w in self.cross_attention]
        if torch.equal(sentence, self.sentence):
            if self.cache is not None:
                for c in self.cache.self_attn:
                    c.reorder(index)
        else:
            self.memory, self.src = self.memory.index_select(0, index), self.src.index_select(0, index)
            if self.cache is not None:
                self.cache.reorder(index)
        self.sentence = sentence


@dataclass
class SearchResult:
    tokens: list[list[int]]  # per sentence, without <s> and </s>
    scores: list[float]  # greedy: log P; beam: length-normalised log P
    hypotheses: list[list[tuple[list[int], float]]] | None = None  # beam: every finished one, best first


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def _max_lengths(max_len: int | Tensor, b: int) -> list[int]:
    if isinstance(max_len, Tensor):
        lengths = [int(x) for x in max_len.tolist()]
    else:
        lengths = [int(max_len)] * b
    if len(lengths) != b or min(lengths) < 1:
        raise ValueError(f"max_len: expected a positive length per sentence ({b}), got {lengths}")
    return lengths


@torch.no_grad()
def greedy_search(step: Step, batch_size: int, bos: int, eos: int, max_len: int | Tensor) -> SearchResult:
    """Arg-max token at each step, until </s> or the sentence's maximum length."""
    limits = _max_lengths(max_len, batch_size)
    device = getattr(getattr(step, "src", None), "device", None)
    prefixes = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in range(batch_size)]
    scores = [0.0] * batch_size
    done = [False] * batch_size
    for t in range(1, max(limits) + 1):
        logp = step(prefixes)  # (B, V)
        best = logp.argmax(dim=-1)  # (B,)
        # one host copy a step (indexing a tensor element by element costs a dispatch each)
        best_ids, best_logp = best.tolist(), logp.gather(1, best[:, None]).squeeze(1).tolist()
        for i in range(batch_size):
            if done[i]:
                continue
            tok = best_ids[i]
            scores[i] += best_logp[i]
            if tok == eos:
                done[i] = True
            else:
                out[i].append(tok)
                done[i] = t >= limits[i]
        if all(done):
            break
        prefixes = torch.cat([prefixes, best[:, None]], dim=1)
    return SearchResult(out, scores)


@torch.no_grad()
def beam_search(
    step: Step,
    batch_size: int,
    beam_size: int,
    bos: int,
    eos: int,
    max_len: int | Tensor,
    alpha: float = 0.6,
) -> SearchResult:
    """Batched beam search; every sentence is searched independently of the others."""
    if beam_size < 1:
        raise ValueError(f"beam_size: expected >= 1, got {beam_size}")
    b, k = batch_size, beam_size
    limits = _max_lengths(max_len, b)
    step.expand(k)
    device = getattr(getattr(step, "src", None), "device", None)
    prefixes = torch.full((b * k, 1), bos, dtype=torch.long, device=device)
    beam_scores = torch.full((b, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: only one may expand at first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    for t in range(1, max(limits) + 1):
        logp = step(prefixes).float()  # (B*K, V)
        v = logp.size(-1)
        cand = (beam_scores.view(b * k, 1) + logp).view(b, k * v)  # (B, K*V)
        top_scores, top_idx = cand.topk(min(2 * k, k * v), dim=1)  # (B, 2K)
        # one host copy a step (indexing a tensor element by element costs a dispatch each)
        top, origin, token = top_scores.tolist(), (top_idx // v).tolist(), (top_idx % v).tolist()
        next_rows, next_tokens, next_scores = [], [], []
        for i in range(b):
            chosen = 0
            if not done[i]:
                for rank in range(len(top[i])):
                    score = top[i][rank]
                    if score == float("-inf"):
                        break
                    row = i * k + origin[i][rank]
                    if token[i][rank] == eos:
                        if rank < k:  # a finished hypothesis counts only if it made the top K
                            hyp = prefixes[row, 1:].tolist()
                            finished[i].append((score / length_penalty(t, alpha), hyp))
                        continue
                    next_rows.append(row)
                    next_tokens.append(token[i][rank])
                    next_scores.append(score)
                    chosen += 1
                    if chosen == k:
                        break
                if len(finished[i]) >= k:
                    done[i] = True
                elif t >= limits[i]:  # out of length: live beams become hypotheses (without </s>)
                    for j in range(chosen):
                        row, tok, score = next_rows[-chosen + j], next_tokens[-chosen + j], next_scores[-chosen + j]
                        finished[i].append((score / length_penalty(t, alpha), prefixes[row, 1:].tolist() + [tok]))
                    done[i] = True
            # keep the tensor shapes: a done sentence carries dead beams
            for _ in range(k - chosen):
                next_rows.append(i * k)
                next_tokens.append(bos)  # any valid id; these rows are never read
                next_scores.append(float("-inf"))
            if done[i]:
                for j in range(k):
                    next_scores[i * k + j] = float("-inf")
        if all(done):
            break
        index = torch.tensor(next_rows, device=prefixes.device)
        step.reorder(index)
        prefixes = torch.cat([prefixes.index_select(0, index),
                              torch.tensor(next_tokens, device=prefixes.device)[:, None]], dim=1)
        beam_scores = torch.tensor(next_scores, device=beam_scores.device).view(b, k)
    ranked = [sorted(f, key=lambda h: -h[0]) for f in finished]
    return SearchResult(
        tokens=[r[0][1] if r else [] for r in ranked],
        scores=[r[0][0] if r else float("-inf") for r in ranked],
        hypotheses=[[(hyp, s) for s, hyp in r] for r in ranked],
    )
