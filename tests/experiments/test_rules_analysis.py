"""The analysis group's rules (dot-vs-additive, cross-attention, interpretability, neuron-importance) on
synthetic measurements that must lead to each outcome each can reach, and the pieces they measure with
(the date task's alignment, attention rollout, the entropy score, the peak-memory probe, the ablation)."""

import pytest
import torch

from transformer_lab.experiments.questions._alignment import alignment, probe, score, year_fields
from transformer_lab.experiments.questions.cross_attention import CrossAttention, ablated_cross_attention, source_sensitivity
from transformer_lab.experiments.questions.dot_vs_additive import ADDITIVE, DOT, FUSED, IMPLS, DotVsAdditive, inputs, peak_bytes
from transformer_lab.experiments.questions.interpretability import (GRAD, GRAD_TOKEN, ROLLOUT, Interpretability,
                                                                    recorded_weights, rollout)
from transformer_lab.experiments.questions.neuron_importance import RANDOM, SCORES, NeuronImportance, entropy
from transformer_lab.experiments.training import dates_data
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer

EXPERIMENTS = {e.id: e for e in (DotVsAdditive(), CrossAttention(), Interpretability(), NeuronImportance())}


# --- synthetic measurements, in the shape each run() returns -------------------------------------
def quality_runs(nll: dict[str, tuple[float, ...]]) -> dict:
    return {name: [dict(seed=i, val_nll=x, exact_match=0.5, diverged=False) for i, x in enumerate(v)]
            for name, v in nll.items()}


def dot_add(time_ratio=(1.5, 8.0), nll16=((0.50, 0.51), (0.50, 0.51)), nll128=((0.50, 0.51), (0.50, 0.51))):
    """time_ratio: additive / dot time at the smallest and the largest cell."""
    cost = [{"d_k": d, "length": t, DOT: dict(seconds=1.0, peak_bytes=100), FUSED: dict(seconds=0.5, peak_bytes=100),
             ADDITIVE: dict(seconds=time_ratio[0] if t == 32 else time_ratio[1], peak_bytes=100 * d)}
            for d in (16, 256) for t in (32, 512)]
    runs = quality_runs({"dot, d_k=16": nll16[0], "additive, d_k=16": nll16[1],
                         "dot, d_k=128": nll128[0], "additive, d_k=128": nll128[1]})
    return {"device": "cpu", "cost": cost, "quality_d_k": [16, 128], "steps": 250, "runs": runs}


def cross(best_mass=0.9, em=(0.6, 0.62), em_ablated=(0.0, 0.0), change=10.0, change_ablated=0.0):
    chance = 0.18
    heads = [[dict(hit=0.3, mass=0.3, chance=chance), dict(hit=best_mass, mass=best_mass, chance=chance)]]
    example = dict(src=list("1987-03-21") + ["</s>"], tgt=["the", "</s>"], weights=[[0.1] * 11] * 2,
                   aligned=[[True] + [False] * 10] * 2, layer=0, head=1)
    models = [dict(seed=i, heads=heads, layers=[dict(hit=0.5, mass=0.5, chance=chance)],
                   best=dict(layer=0, head=1, hit=best_mass, mass=best_mass, chance=chance), example=example,
                   exact_match=e, exact_match_ablated=a, val_nll=0.2, val_nll_ablated=2.0, source_change=change,
                   source_change_ablated=change_ablated) for i, (e, a) in enumerate(zip(em, em_ablated))]
    return {"models": models, "guess_exact_match": 0.0}


def interp(att=(0.95, 0.96), grad=(0.6, 0.62), chance=0.18):
    models = []
    for i in range(2):
        scores = {"attention, layer 1": dict(hit=0.3, mass=0.3, chance=chance),
                  "attention, layer 2": dict(hit=att[i], mass=att[i], chance=chance),
                  ROLLOUT: dict(hit=0.5, mass=0.5, chance=chance), GRAD: dict(hit=grad[i], mass=grad[i], chance=chance),
                  GRAD_TOKEN: dict(hit=0.5, mass=0.5, chance=chance)}
        names = list(scores)
        agreement = {f"{x} | {y}": 0.3 for j, x in enumerate(names) for y in names[j + 1:]}
        example = dict(src=list("1987") + ["</s>"], tgt=["nineteen", "</s>"], aligned=[[True, True, False, False, False]] * 2,
                       maps={n: [[0.5, 0.2, 0.1, 0.1, 0.1]] * 2 for n in names})
        models.append(dict(seed=i, exact_match=0.6, scores=scores, agreement=agreement, example=example))
    return {"models": models}


def neurons(taylor=0.3, activation=0.3, ent=0.3, rnd=0.5):
    """Each score's NLL at every pruned fraction (the two seeds differ by 0.01)."""
    fractions = [0.0, 0.25, 0.5, 0.75]
    models = []
    for i in range(2):
        curves = {name: [0.2] + [x + 0.01 * i] * 3 for name, x in zip((*SCORES, RANDOM), (taylor, activation, ent, rnd))}
        models.append(dict(seed=i, curves=curves, random_curves=[curves[RANDOM]], dead_share=0.05))
    return {"fractions": fractions, "models": models}


CASES = [
    ("dot-vs-additive", dot_add(), "confirmed"),
    ("dot-vs-additive", dot_add(nll128=((0.50, 0.51), (0.30, 0.31))), "partly"),
    ("dot-vs-additive", dot_add(time_ratio=(0.8, 8.0)), "partly"),  # speed unresolved, quality similar
    ("dot-vs-additive", dot_add(time_ratio=(0.5, 0.8), nll16=((0.50, 0.51), (0.30, 0.31)),
                                nll128=((0.50, 0.51), (0.30, 0.31))), "refuted"),
    ("dot-vs-additive", dot_add(time_ratio=(0.5, 0.8), nll16=((0.50, 0.90), (0.50, 0.60))), "partly"),
    ("dot-vs-additive", dot_add(time_ratio=(1.5, 1.5), nll16=((0.50, 0.90), (0.50, 0.60)),
                                nll128=((0.50, 0.90), (0.50, 0.60))), "inconclusive"),
    ("cross-attention", cross(), "confirmed"),
    ("cross-attention", cross(best_mass=0.3), "partly"),
    ("cross-attention", cross(em_ablated=(0.2, 0.3)), "partly"),
    ("cross-attention", cross(best_mass=0.3, em_ablated=(0.2, 0.3)), "refuted"),
    ("cross-attention", cross(change_ablated=0.5), "refuted"),
    ("cross-attention", cross(em=(0.0, 0.01)), "inconclusive"),
    ("cross-attention", cross(change=1e-4), "inconclusive"),
    ("interpretability", interp(), "confirmed"),
    ("interpretability", interp(att=(0.6, 0.61), grad=(0.6, 0.62)), "confirmed"),
    ("interpretability", interp(att=(0.5, 0.51), grad=(0.9, 0.91)), "partly"),
    ("interpretability", interp(att=(0.2, 0.21), grad=(0.9, 0.91)), "refuted"),
    ("interpretability", interp(att=(0.2, 0.21), grad=(0.2, 0.22)), "inconclusive"),
    ("neuron-importance", neurons(), "confirmed"),
    ("neuron-importance", neurons(ent=0.9), "partly"),
    ("neuron-importance", neurons(taylor=0.9, activation=0.9, ent=0.5), "refuted"),
    ("neuron-importance", neurons(taylor=0.5, activation=0.502, ent=0.5), "inconclusive"),
]


@pytest.mark.parametrize("exp_id, measurements", [(c[0], c[1]) for c in CASES[::4]])
def test_figures_draw_from_the_measurements(exp_id, measurements, tmp_path):
    paths = EXPERIMENTS[exp_id].figures(measurements, tmp_path)
    assert paths and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


# --- the pieces ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dates():
    return dates_data((1900, 2099), 20)


@pytest.fixture(scope="module")
def model(dates):
    torch.manual_seed(0)
    _, _, vocab = dates
    return Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), pad_id=vocab.pad_id,
                              n_encoder_layers=2, n_decoder_layers=2)).eval()


@pytest.mark.parametrize("src, tgt, expected", [
    # written out by hand: the field each word reads, None for "the", "of" and </s>
    ("21.03.1987", "the twenty first of march nineteen eighty seven",
     [None, (0, 1), (0, 1), None, (3, 4), (6, 7), (8, 9), (8, 9), None]),
    ("2005-11-30", "the thirtieth of november two thousand five", [None, (8, 9), None, (5, 6), (0, 1), (0, 1), (2, 3), None]),
    ("04/09/1900", "the ninth of april nineteen hundred", [None, (3, 4), None, (0, 1), (6, 7), (8, 9), None]),
    ("1 mar 1905", "the first of march nineteen oh five", [None, (0,), None, (2, 3, 4), (6, 7), (8, 9), (8, 9), None]),
    ("12 feb 2019", "the twelfth of february twenty nineteen", [None, (0, 1), None, (3, 4, 5), (7, 8), (9, 10), None]),
])
def test_alignment_names_the_characters_each_word_reads(src, tgt, expected):
    assert alignment(list(src), tgt.split()) == expected


def test_alignment_covers_every_date_and_rejects_a_wrong_reading(dates):
    train, test, _ = dates
    for src, tgt in train + test:  # every date of 1900-2099, each in its drawn format
        assert len(alignment(src, tgt)) == len(tgt) + 1
    assert [year_fields(y) for y in (2000, 2001, 1999)] == [["hi", "hi"], ["hi", "hi", "lo"], ["hi", "lo", "lo"]]
    with pytest.raises(ValueError, match="not the reading"):
        alignment(list("1987-03-21"), "the twentieth of march nineteen eighty seven".split())


def test_score_of_the_alignment_itself_and_of_a_uniform_map(dates):
    _, test, vocab = dates
    p = probe(test, vocab)
    perfect = score(p.aligned.float(), p)
    assert perfect["hit"] == 1.0 and perfect["mass"] == pytest.approx(1.0)
    uniform = score(p.real[:, None, :].expand_as(p.aligned).float(), p)
    assert uniform["mass"] == pytest.approx(uniform["chance"], rel=1e-5)  # uniform mass = chance, by definition


def test_rollout_of_identity_attention_and_by_hand():
    b, s, t = 1, 3, 2
    eye_s, eye_t = torch.eye(s).expand(b, s, s), torch.eye(t).expand(b, t, t)
    cross = torch.tensor([[[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]]])  # (B, T, S)
    one = {"encoder": [eye_s], "self": [eye_t], "cross": [cross]}
    torch.testing.assert_close(rollout(one), 0.5 * cross)  # half the layer's output is the residual's
    enc = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    dec_self = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    two = {"encoder": [enc], "self": [eye_t, dec_self], "cross": [cross, cross]}
    r_enc = 0.5 * enc + 0.5 * eye_s  # source token -> encoder output, through one layer
    layer1 = 0.5 * cross @ r_enc  # nothing reached the target rows from the source before
    layer2 = 0.5 * ((0.5 * dec_self + 0.5 * eye_t) @ layer1) + 0.5 * cross @ r_enc
    torch.testing.assert_close(rollout(two), layer2)


def test_recorded_weights_are_the_attention_the_layer_used(model, dates):
    _, test, vocab = dates
    p = probe(test[:4], vocab)
    plain = model(p.batch.src, p.batch.tgt_in)
    with recorded_weights([layer.cross_attn for layer in model.decoder.layers]) as weights:
        recorded = model(p.batch.src, p.batch.tgt_in)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)  # asking for the weights changes nothing
    model.decode(model.encode(p.batch.src), p.batch.src, p.batch.tgt_in, record_cross_attention=True)
    assert len(weights) == len(model.decoder.layers)
    for w, layer in zip(weights, model.decoder.layers):
        torch.testing.assert_close(w, layer.cross_weights)


def test_entropy_of_constant_uniform_and_two_valued_columns():
    n, bins = 1600, 16
    a = torch.stack([torch.zeros(n), torch.arange(n).float(), (torch.arange(n) % 2).float()], 1)
    torch.testing.assert_close(entropy(a, bins), torch.tensor([0.0, torch.log(torch.tensor(16.0)), torch.log(torch.tensor(2.0))]))


def test_ablated_cross_attention_cuts_the_decoder_off_the_source(model, dates):
    _, test, vocab = dates
    assert source_sensitivity(model, test[:8], vocab) > 1e-4  # even untrained, the source reaches the output
    with ablated_cross_attention(model):
        assert source_sensitivity(model, test[:8], vocab) == 0.0
    assert source_sensitivity(model, test[:8], vocab) > 1e-4  # the hooks are gone


def test_additive_attention_holds_more_memory_than_the_dot_product():
    args = inputs(1, 2, 32, 64, torch.device("cpu"), 0)
    dot, add = peak_bytes(IMPLS[DOT], args, torch.device("cpu")), peak_bytes(IMPLS[ADDITIVE], args, torch.device("cpu"))
    assert dot >= 2 * 32 * 32 * 4  # at least the (B, H, T, T) scores, in float32
    assert add >= 2 * 32 * 32 * 64 * 4 > dot  # at least the (B, H, T, T, d_k) tanh hidden
