"""Our weights in ``torch.nn.Transformer``: the oracle of the tests and the peer of the benchmark.

``nn.Transformer`` has no embeddings and no output layer, and always ends both stacks with a
LayerNorm. The paper's post-LN model has no such final norm, so for ``norm_first=False`` those two
norms are replaced by ``nn.Identity`` (documented deviation of the peer, not of our model); for
pre-LN they receive our final norms' weights.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.attention import MultiHeadAttention
from transformer_lab.nn.masks import causal_mask


def _copy_attention(dst: nn.MultiheadAttention, src: MultiHeadAttention) -> None:
    # nn.MultiheadAttention packs W_Q, W_K, W_V row-wise into one (3D, D) in_proj matrix.
    dst.in_proj_weight.copy_(torch.cat([src.w_q.weight, src.w_k.weight, src.w_v.weight]))
    dst.in_proj_bias.copy_(torch.cat([src.w_q.bias, src.w_k.bias, src.w_v.bias]))
    dst.out_proj.weight.copy_(src.w_o.weight)
    dst.out_proj.bias.copy_(src.w_o.bias)


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


@torch.no_grad()
def to_torch_transformer(model: Transformer) -> nn.Transformer:
    """An ``nn.Transformer`` (batch_first) computing exactly our encoder and decoder stacks."""
    c = model.config
    if c.activation not in ("relu", "gelu"):
        raise ValueError(f"activation: nn.Transformer supports relu and gelu, not {c.activation!r}")
    with warnings.catch_warnings():  # "enable_nested_tensor is True, but ... norm_first": expected
        warnings.simplefilter("ignore", UserWarning)
        ref = nn.Transformer(
            d_model=c.d_model, nhead=c.n_heads, num_encoder_layers=c.n_encoder_layers,
            num_decoder_layers=c.n_decoder_layers, dim_feedforward=c.d_ff, dropout=c.dropout,
            activation=c.activation, layer_norm_eps=c.layer_norm_eps, batch_first=True, norm_first=c.norm_first,
        )
    for r, o in zip(ref.encoder.layers, model.encoder.layers):
        _copy_attention(r.self_attn, o.self_attn)
        _copy(r.linear1, o.ffn.w_1), _copy(r.linear2, o.ffn.w_2)
        _copy(r.norm1, o.sublayers[0].norm), _copy(r.norm2, o.sublayers[1].norm)
    for r, o in zip(ref.decoder.layers, model.decoder.layers):
        _copy_attention(r.self_attn, o.self_attn)
        _copy_attention(r.multihead_attn, o.cross_attn)
        _copy(r.linear1, o.ffn.w_1), _copy(r.linear2, o.ffn.w_2)
        for i, norm in enumerate((r.norm1, r.norm2, r.norm3)):
            _copy(norm, o.sublayers[i].norm)
    if c.norm_first:
        _copy(ref.encoder.norm, model.encoder.norm)
        _copy(ref.decoder.norm, model.decoder.norm)
    else:
        ref.encoder.norm = nn.Identity()  # the paper's post-LN stacks end without a final norm
        ref.decoder.norm = nn.Identity()
    return ref.to(next(model.parameters()).device)


def torch_masks(src: Tensor, tgt: Tensor, pad_id: int) -> dict[str, Tensor]:
    """Our masks in nn.Transformer's polarity (True = do NOT attend), flipped here at the boundary."""
    return dict(
        src_key_padding_mask=src == pad_id,
        tgt_mask=~causal_mask(tgt.size(1), tgt.device)[0, 0],
        tgt_key_padding_mask=tgt == pad_id,
        memory_key_padding_mask=src == pad_id,
    )


class TorchTransformerPeer(nn.Module):
    """Copies of our embeddings and generator around ``nn.Transformer``: the same function as ``model``
    computed by PyTorch's own layers. Shapes: src (B, S), tgt (B, T) -> (B, T, V) log-probs."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.pad_id = model.config.pad_id
        # deepcopy of the three together keeps their weight tying.
        self.src_embed, self.tgt_embed, self.generator = copy.deepcopy(
            (model.src_embed, model.tgt_embed, model.generator)
        )
        self.transformer = to_torch_transformer(model)

    def forward(self, src: Tensor, tgt: Tensor, log_probs: bool = True) -> Tensor:
        hidden = self._hidden(src, tgt)
        return self.generator(hidden) if log_probs else self.generator.proj(hidden)

    def logits(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self(src, tgt, log_probs=False)

    def _hidden(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.transformer(self.src_embed(src), self.tgt_embed(tgt), **torch_masks(src, tgt, self.pad_id))
