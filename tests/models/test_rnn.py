"""The LSTM encoder-decoder baseline (`vs-rnn`): shapes, padding, an oracle built from nn.LSTMCell with
the model's own nn.LSTM weights copied in, incremental decoding, gradcheck of the attention, and the
seams it shares with the Transformer (training loop, greedy search, checkpoints)."""

import pytest
import torch
from torch import nn

from conftest import padded_batch
from transformer_lab.data.batches import Batch
from transformer_lab.generation.search import Seq2SeqStep, greedy_search
from transformer_lab.models.rnn import RNNConfig, RNNSeq2Seq
from transformer_lab.runs import load_model, save_checkpoint
from transformer_lab.tasks.translation import seq2seq_loss
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import Trainer

V, D = 23, 16


def rnn(**kw) -> RNNSeq2Seq:
    return RNNSeq2Seq(RNNConfig(**{"src_vocab_size": V, "tgt_vocab_size": V, "d_model": D, "n_layers": 2, "dropout": 0.0,
                                   **kw})).eval()


@pytest.mark.parametrize("score", ["general", "additive"])
def test_shapes_and_log_probabilities(score):
    model = rnn(score=score)
    src, tgt = padded_batch(3, 7, V), padded_batch(3, 5, V)
    logp = model(src, tgt)
    assert logp.shape == (3, 5, V) and model.logits(src, tgt).shape == (3, 5, V)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 5), atol=1e-5, rtol=0)
    memory = model.encode(src)
    assert memory.shape == (3, 7, D)
    assert memory[src == 0].abs().max() == 0  # padded source positions hold nothing


@pytest.mark.parametrize("score", ["general", "additive"])
def test_padding_changes_nothing_for_the_real_tokens(score):
    """A sentence padded inside a batch gives the outputs it gives alone (packing, masked attention)."""
    model = rnn(score=score)
    short_src, short_tgt = torch.tensor([[5, 6, 7]]), torch.tensor([[4, 9]])
    alone = model(short_src, short_tgt)
    src = torch.tensor([[5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 12, 13]])
    tgt = torch.tensor([[4, 9, 0, 0], [4, 5, 6, 7]])
    together = model(src, tgt)
    torch.testing.assert_close(together[0, :2], alone[0], atol=1e-5, rtol=1e-5)


def reference(model: RNNSeq2Seq, src: list[int], tgt: list[int]) -> torch.Tensor:
    """The model's equations written out one position at a time with nn.LSTMCell (weights copied from
    its nn.LSTM layers), for one unpadded sentence: the oracle for the fused, packed, batched path."""
    c = model.config
    half = c.d_model // 2

    def cell(lstm: nn.LSTM, layer: int, suffix: str = "") -> nn.LSTMCell:
        out = nn.LSTMCell(lstm.input_size if layer == 0 else lstm.hidden_size * (2 if lstm.bidirectional else 1),
                          lstm.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(out, name).data.copy_(getattr(lstm, f"{name}_l{layer}{suffix}"))
        return out

    x = model.src_embed.weight[src]  # (S, D)
    for layer in range(c.n_layers):
        outs = []
        for suffix, order in (("", range(len(src))), ("_reverse", reversed(range(len(src))))):
            f = cell(model.encoder, layer, suffix)
            h = cc = torch.zeros(1, half)
            states = {}
            for t in order:
                h, cc = f(x[t][None], (h, cc))
                states[t] = h[0]
            outs.append(torch.stack([states[t] for t in range(len(src))]))
        x = torch.cat(outs, dim=-1)  # (S, D): forward half, backward half
    memory = x
    h0 = torch.tanh(model.init_state(torch.cat([memory[-1, :half], memory[0, half:]])))
    cells = [cell(model.decoder, layer) for layer in range(c.n_layers)]
    state = [(h0[None], torch.zeros(1, c.d_model)) for _ in range(c.n_layers)]
    out = []
    for y in tgt:
        inp = model.tgt_embed.weight[y][None]
        for layer, f in enumerate(cells):
            state[layer] = f(inp, state[layer])
            inp = state[layer][0]
        h = inp[0]
        scores = memory @ model.w_a(h) if c.score == "general" else \
            torch.tanh(model.w_q(h) + model.w_k(memory)) @ model.v_score[0]
        context = scores.softmax(-1) @ memory
        out.append(torch.log_softmax(model.generator.proj(torch.tanh(model.combine(torch.cat([context, h])))), -1))
    return torch.stack(out)


@pytest.mark.parametrize("score", ["general", "additive"])
def test_batched_model_matches_a_step_by_step_lstm_cell_oracle(score):
    model = rnn(score=score)
    sentences = [([5, 6, 7, 8], [4, 9, 10]), ([11, 12], [13, 14, 15])]
    src = torch.tensor([[5, 6, 7, 8], [11, 12, 0, 0]])
    tgt = torch.tensor([[4, 9, 10], [13, 14, 15]])
    with torch.no_grad():
        batched = model(src, tgt)
        for i, (s, t) in enumerate(sentences):
            torch.testing.assert_close(batched[i], reference(model, s, t), atol=1e-5, rtol=1e-5)


def test_incremental_decoding_equals_teacher_forcing():
    model = rnn()
    src, tgt = padded_batch(3, 6, V), torch.randint(1, V, (3, 5))
    memory = model.encode(src)
    full = model.decode(memory, src, tgt)
    cache = model.new_cache()
    steps = [model.decode(memory, src, tgt[:, t:t + 1], cache=cache) for t in range(tgt.size(1))]
    assert cache.length == 5
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # greedy search runs it as it runs the Transformer, with or without the cache
    cached = greedy_search(Seq2SeqStep(model, src), 3, 2, 3, 8).tokens
    assert cached == greedy_search(Seq2SeqStep(model, src, use_cache=False), 3, 2, 3, 8).tokens


@pytest.mark.parametrize("score", ["general", "additive"])
def test_attention_gradcheck(score):
    model = rnn(score=score).double()
    src = torch.tensor([[5, 6, 7], [8, 9, 0]])
    h = torch.randn(2, 2, D, dtype=torch.double, requires_grad=True)
    memory = torch.randn(2, 3, D, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, m: model.attend(q, m, src)[0], (h, memory))
    weights = model.attend(h, memory, src)[1]
    assert weights[1, :, 2].abs().max() == 0  # the padded key gets no weight


def test_trains_with_the_translation_loss_and_round_trips_a_checkpoint(tmp_path):
    model = RNNSeq2Seq(RNNConfig(V, V, 32, 1, dropout=0.1))
    pairs = [(padded_batch(8, 5, V, min_len=5), torch.randint(4, V, (8, 5))) for _ in range(2)]

    class Source:
        def __len__(self):
            return 2

        def epoch(self, epoch):
            return [[0], [1]]

        def make(self, ix):
            src, tgt = pairs[ix[0]]
            return Batch(src, torch.cat([torch.full((8, 1), 2), tgt], 1), torch.cat([tgt, torch.full((8, 1), 3)], 1))

    cfg = TrainConfig(max_steps=60, warmup=5, schedule="constant", lr=2e-2, progress=False, log_every=1)
    result = Trainer(model, Source(), cfg, tmp_path / "run", seq2seq_loss(0.0)).fit()
    losses = [r["loss"] for r in result.state.history if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    save_checkpoint(tmp_path / "ckpt", model, {})
    loaded = load_model(tmp_path / "ckpt").model.eval()
    src, tgt = pairs[0][0], pairs[0][1]
    assert isinstance(loaded, RNNSeq2Seq)
    torch.testing.assert_close(loaded(src, tgt), model.eval()(src, tgt))


@pytest.mark.parametrize("kw, message", [(dict(d_model=15), "d_model"), (dict(score="dot"), "score"),
                                         (dict(tgt_vocab_size=V + 1), "share_embeddings"), (dict(n_layers=0), "n_layers")])
def test_bad_config_is_a_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        rnn(**kw)


def test_decoder_refuses_a_target_mask():
    model = rnn()
    src, tgt = padded_batch(2, 4, V), padded_batch(2, 3, V)
    with pytest.raises(ValueError, match="tgt_mask"):
        model.decode(model.encode(src), src, tgt, tgt_mask=torch.ones(1, 1, 3, 3, dtype=torch.bool))
