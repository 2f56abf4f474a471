"""An LSTM encoder-decoder with attention: the recurrent baseline the Transformer replaced (`vs-rnn`).

    memory  = BiLSTM_N(E[src])                            (D/2 per direction: memory is D wide)
    s_0     = tanh(W_init [fwd_last; bwd_first])          (Bahdanau et al. 2015's initial state; every layer)
    h_t     = LSTM_N(E[y_{t-1}], s_{t-1})                 (one fused nn.LSTM call over all T positions)
    a_t     = softmax_s score(h_t, memory_s)              (padded source positions masked)
    c_t     = Σ_s a_ts memory_s
    h~_t    = tanh(W_c [c_t; h_t])                        (Luong et al. 2015, eq. 5: the attentional state)
    log p(y_t | y_<t, x) = log_softmax(W_out h~_t)

``score``: "general" is Luong et al.'s h_tᵀ W_a m_s; "additive" is Bahdanau et al.'s
vᵀ tanh(W_q h_t + W_k m_s) (the same ``nn.attention.additive_attention`` the Transformer's variant
uses, with one head). This is Luong's global attention *without* input feeding (§3.3): the attentional
state is not fed back into the recurrence, so in training the decoder runs as one ``nn.LSTM`` call
over the whole target and the attention over all positions at once. That is the fastest recurrent
baseline we could build (the recurrence itself stays sequential, inside PyTorch's fused kernel):
a comparison of speed against it is conservative. Bahdanau's full model (query s_{t-1}, context fed
into the recurrence) would loop in Python over target positions; it is not built.

The interface is the Transformer's, so the training loop, ``tasks.translation.seq2seq_loss``,
``tasks.dates.exact_match`` and ``generation.search`` work unchanged: ``forward(src, tgt_in)`` ->
log-probabilities, ``logits``, ``encode(src)`` -> memory (B, S, D), ``decode(memory, src, tgt,
cache=...)`` -> attentional states (B, T, D), ``new_cache()`` (the recurrent state), ``generator``.

Shapes: B batch, S source length, T target length, D = d_model, L layers, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from transformer_lab.models.registry import register_model_kind
from transformer_lab.models.transformer import Generator
from transformer_lab.nn.attention import additive_attention
from transformer_lab.nn.dropout import Dropout
from transformer_lab.nn.embeddings import check_tokens

SCORES = ("general", "additive")


@dataclass
class RNNConfig:
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 256  # embedding width, decoder state, memory (D/2 per encoder direction)
    n_layers: int = 2  # encoder and decoder alike (the decoder's initial state is per layer)
    dropout: float = 0.1  # embeddings, between LSTM layers, attentional state
    score: str = "general"  # "general" (Luong) or "additive" (Bahdanau)
    share_embeddings: bool = True  # tie source, target and output embeddings; needs one vocabulary
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.d_model % 2:
            raise ValueError(f"d_model: expected an even width (D/2 per encoder direction), got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.score not in SCORES:
            raise ValueError(f"score: expected one of {SCORES}, got {self.score!r}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(f"share_embeddings: needs one vocabulary, but src_vocab_size={self.src_vocab_size} "
                             f"!= tgt_vocab_size={self.tgt_vocab_size}")
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id: expected an id inside both vocabularies, got {self.pad_id}")


@dataclass
class RNNCache:
    """The decoder's recurrent state between incremental calls: what a KV cache is to the Transformer.
    h, c: (L, B, D)."""

    h: Tensor | None = None
    c: Tensor | None = None
    length: int = 0  # target positions decoded so far

    def reorder(self, index: Tensor) -> None:
        if self.h is not None:
            self.h, self.c = self.h.index_select(1, index), self.c.index_select(1, index)


class RNNSeq2Seq(nn.Module):
    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = c = config
        d, half = c.d_model, c.d_model // 2
        self.src_embed = nn.Embedding(c.src_vocab_size, d)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, d)
        self.dropout = Dropout(c.dropout)
        between = c.dropout if c.n_layers > 1 else 0.0  # nn.LSTM drops out between layers only
        self.encoder = nn.LSTM(d, half, c.n_layers, batch_first=True, bidirectional=True, dropout=between)
        self.init_state = nn.Linear(d, d)  # W_init: [fwd_last; bwd_first] -> s_0
        self.decoder = nn.LSTM(d, d, c.n_layers, batch_first=True, dropout=between)
        if c.score == "general":
            self.w_a = nn.Linear(d, d, bias=False)
        else:
            self.w_q, self.w_k = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
            self.v_score = nn.Parameter(torch.empty(1, d).uniform_(-d**-0.5, d**-0.5))
        self.combine = nn.Linear(2 * d, d, bias=False)  # W_c
        self.generator = Generator(d, c.tgt_vocab_size)
        nn.init.normal_(self.src_embed.weight, std=d**-0.5)  # unit-norm rows on average: the output's scale too
        if c.share_embeddings:
            self.generator.proj.weight = self.tgt_embed.weight
        elif self.tgt_embed is not self.src_embed:
            nn.init.normal_(self.tgt_embed.weight, std=d**-0.5)

    # --- the two halves -------------------------------------------------------------------------
    def encode(self, src: Tensor) -> Tensor:
        """Shapes: src (B, S) -> memory (B, S, D); zeros at padded positions. Each sentence is packed
        to its length, so padding never enters either direction's recurrence."""
        check_tokens(src, self.config.src_vocab_size, "src")
        lengths = (src != self.config.pad_id).sum(1).clamp(min=1).cpu()  # an empty row reads its first token
        packed = pack_padded_sequence(self.dropout(self.src_embed(src)), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, D)
        return memory

    def initial_state(self, memory: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
        """s_0 from the memory alone (so a search step needs nothing else): the forward direction at
        the last real position and the backward one at the first, each having read the whole source.
        Shapes: -> h, c (L, B, D); c starts at zero."""
        half = self.config.d_model // 2
        last = ((src != self.config.pad_id).sum(1) - 1).clamp(min=0)  # (B,)
        rows = torch.arange(src.size(0), device=src.device)
        summary = torch.cat([memory[rows, last, :half], memory[:, 0, half:]], dim=-1)  # (B, D)
        h = torch.tanh(self.init_state(summary)).expand(self.config.n_layers, -1, -1).contiguous()
        return h, torch.zeros_like(h)

    def attend(self, h: Tensor, memory: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
        """Context vectors and weights. Shapes: h (B, T, D), memory (B, S, D) -> (B, T, D), (B, T, S)."""
        keep = (src != self.config.pad_id)[:, None, :]  # (B, 1, S): real source positions
        if self.config.score == "additive":
            res = additive_attention(self.w_q(h)[:, None], self.w_k(memory)[:, None], memory[:, None], self.v_score,
                                     mask=keep[:, None])  # one head: (B, 1, T, D)
            return res.output[:, 0], res.weights[:, 0]
        scores = self.w_a(h) @ memory.transpose(1, 2)  # (B, T, S): Luong's "general" score, unscaled
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1).masked_fill(~keep, 0.0)
        return weights @ memory, weights

    def decode(self, memory: Tensor, src: Tensor, tgt: Tensor, tgt_mask: Tensor | None = None,
               record_cross_attention: bool = False, cache: RNNCache | None = None) -> Tensor:
        """Attentional states h~. Shapes: memory (B, S, D), src (B, S), tgt (B, T) -> (B, T, D).

        With ``cache``, ``tgt`` holds only the new positions, which continue from the cached state.
        ``tgt_mask`` must be None: the recurrence is causal by construction (a right-padded target's
        pads come after its real tokens and change none of their states)."""
        if tgt_mask is not None:
            raise ValueError("tgt_mask: the recurrent decoder is causal by construction; pass None")
        if record_cross_attention:
            raise ValueError("record_cross_attention: not recorded by the recurrent decoder")
        if memory.dim() != 3 or memory.shape[:2] != src.shape:
            raise ValueError(f"memory: expected (B, S, D) matching src {tuple(src.shape)}, got {tuple(memory.shape)}")
        check_tokens(tgt, self.config.tgt_vocab_size, "tgt")
        if tgt.size(0) != src.size(0):
            raise ValueError(f"tgt: batch size {tgt.size(0)} differs from src batch size {src.size(0)}")
        state = self.initial_state(memory, src) if cache is None or cache.h is None else (cache.h, cache.c)
        h, (h_n, c_n) = self.decoder(self.dropout(self.tgt_embed(tgt)), state)  # (B, T, D)
        if cache is not None:
            cache.h, cache.c, cache.length = h_n, c_n, cache.length + tgt.size(1)
        context, _ = self.attend(h, memory, src)
        return self.dropout(torch.tanh(self.combine(torch.cat([context, h], dim=-1))))

    def new_cache(self) -> RNNCache:
        return RNNCache()

    def forward(self, src: Tensor, tgt: Tensor, log_probs: bool = True) -> Tensor:
        """Teacher-forced log-probabilities (``log_probs=False``: scores before the softmax, for a fused
        loss). Shapes: src (B, S), tgt (B, T) -> (B, T, V)."""
        hidden = self.decode(self.encode(src), src, tgt)
        return self.generator(hidden) if log_probs else self.generator.proj(hidden)

    def logits(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self(src, tgt, log_probs=False)


register_model_kind("rnn", RNNConfig, RNNSeq2Seq)  # checkpoints of this model save and load
