"""Structured pruning (compression/pruning.py). Oracle: the unpruned model with the removed neurons'
columns of W_2 zeroed by hand (their path cut, every shape kept), and the kept layers run by hand."""

import copy

import pytest
import torch

from transformer_lab.compression import ffn_neuron_scores, keep_layers, prune_ffn
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig


def _bert(**kw):
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=50, d_model=16, n_layers=3, n_heads=2, d_ff=40, max_len=32, **kw)).eval()


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_pruned_ffn_equals_the_dense_model_with_those_neurons_cut(activation):
    model = _bert(activation=activation)
    ffns = [layer.ffn for layer in model.encoder.layers]
    width = ffns[0].w_1.out_features
    kept = [set(ffn_neuron_scores(f).topk(round(0.4 * width)).indices.tolist()) for f in ffns]
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer, keep in zip(masked.encoder.layers, kept):
            for i in set(range(width)) - keep:
                layer.ffn.w_2.weight[:, i] = 0
    pruned = prune_ffn(copy.deepcopy(model), 0.4)
    tokens = torch.randint(5, 50, (3, 11))
    assert pruned.config.d_ff == len(kept[0]) == ffns[0].w_1.out_features * 2 // 5
    assert all(layer.ffn.w_1.weight.shape == (len(kept[0]), 16) for layer in pruned.encoder.layers)
    torch.testing.assert_close(pruned(tokens).hidden, masked(tokens).hidden, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # keeping every neuron changes nothing
    torch.testing.assert_close(prune_ffn(copy.deepcopy(model), 1.0)(tokens).hidden, model(tokens).hidden)


def test_prune_ffn_works_on_a_gpt_and_refuses_bad_fractions():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=16)).eval()
    assert prune_ffn(gpt, 0.5).config.d_ff == 16
    assert gpt(torch.randint(0, 30, (2, 7))).shape == (2, 7, 30)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="keep"):
            prune_ffn(_bert(), bad)


def test_keep_layers_runs_only_those_layers_in_order():
    model = _bert()
    tokens = torch.randint(5, 50, (2, 9))
    x = model.embed(tokens, torch.zeros_like(tokens), torch.arange(9).expand(2, 9))
    mask = (tokens != model.config.pad_id)[:, None, None, :]
    for i in (0, 2):
        x = model.encoder.layers[i](x, mask, None)
    student = keep_layers(copy.deepcopy(model), [0, 2])
    assert student.config.n_layers == 2 and len(student.encoder.layers) == 2
    torch.testing.assert_close(student(tokens).hidden, x, atol=1e-5, rtol=1e-5)
    for bad in ([], [0, 0], [3]):
        with pytest.raises(ValueError, match="indices"):
            keep_layers(_bert(), bad)
    # a translation model's config counts encoder and decoder layers apart: refused, not left undescribed
    from transformer_lab.models.transformer import Transformer, TransformerConfig

    seq2seq = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, d_ff=32,
                                            n_encoder_layers=2, n_decoder_layers=2))
    with pytest.raises(ValueError, match="BERT-style"):
        keep_layers(seq2seq, [0])
    assert prune_ffn(seq2seq, 0.5).config.d_ff == 16  # its FFNs share one width


def test_a_pruned_model_saves_and_loads_as_a_smaller_model(tmp_path):
    """Its config describes it (d_ff, n_layers), so the checkpoint loads with no help."""
    from transformer_lab.runs import load_model, save_checkpoint

    model = keep_layers(prune_ffn(_bert(), 0.5), [0, 2])
    save_checkpoint(tmp_path / "pruned", model, {"step": 0})
    loaded = load_model(tmp_path / "pruned").model.eval()
    assert (loaded.config.d_ff, loaded.config.n_layers) == (20, 2)
    tokens = torch.randint(5, 50, (2, 9))
    torch.testing.assert_close(loaded(tokens).hidden, model(tokens).hidden, atol=0, rtol=0)
