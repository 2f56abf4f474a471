"""The decision rules of the architecture questions (layernorm, norm-position, ffn, warmup, dropout),
given synthetic measurements in the shape each run() returns, that must lead to each outcome the rule
can reach."""

import torch

from transformer_lab.experiments.questions.dropout import Dropout
from transformer_lab.experiments.questions.ffn import FeedForward, dead_share
from transformer_lab.experiments.questions.layernorm import LayerNormQuestion, mean_shift
from transformer_lab.experiments.questions.norm_position import NormPosition, paper_config_is_post_ln
from transformer_lab.experiments.questions.warmup import Warmup
from transformer_lab.experiments.training import dates_data
from transformer_lab.models.presets import preset
from transformer_lab.models.transformer import Transformer

CLASSES = {c.id: c for c in (LayerNormQuestion, NormPosition, FeedForward, Warmup, Dropout)}


def rows(**metrics):
    """One row per seed from {metric: [value per seed]}."""
    n = len(next(iter(metrics.values())))
    return [dict(seed=i, diverged=False, **{k: v[i] for k, v in metrics.items()}) for i in range(n)]


def layernorm(ln=((0.3, 0.31), (0.2, 0.21)), padded=((1.0, 1.02), (0.5, 0.52)), masked=((0.8, 0.82), (0.3, 0.31)),
              shift=0.3):
    """NLL pairs per norm as (batch 8, batch 64)."""
    norms = {"LayerNorm": ln, "BatchNorm, padding in statistics": padded, "BatchNorm, masked statistics": masked}
    runs = {f"{n}, batch {b}": rows(val_nll=list(v[i]), exact_match=[0.5, 0.5], losses=[[1.0], [1.0]])
            for n, v in norms.items() for i, b in enumerate((8, 64))}
    return {"runs": runs, "vocab_size": 103, "batch_sizes": [8, 64],
            "padding_shift": [dict(extra_pads=0, pad_share=0.08, shift=0.01), dict(extra_pads=48, pad_share=0.8, shift=shift)],
            "running_shift": {"BatchNorm, padding in statistics": 0.2, "BatchNorm, masked statistics": 0.1}}


def norm_position(post=None, pre=None, paper=True):
    """Final training losses (per seed) per (depth, warm-up); defaults: pre-LN better everywhere."""
    post = post or {}
    pre = pre or {}
    runs = {}
    for d in (2, 6):
        for w in (False, True):
            for name, table, default in (("post-LN", post, (2.0, 2.02)), ("pre-LN", pre, (1.0, 1.01))):
                loss = table.get((d, w), default)
                runs[f"{name}, {d} layers, {'warm-up' if w else 'no warm-up'}"] = rows(
                    losses=[[5.0] * 9 + [x] for x in loss], val_nll=[1.0, 1.0])
    grads = {f"{p}, {d} layers": {"encoder": [1.0] * d, "decoder": [1.0] * (d - 1) + [3.0 if p == "post-LN" else 1.0]}
             for d in (2, 6) for p in ("post-LN", "pre-LN")}
    return {"paper_post_ln": paper, "depths": [2, 6], "gradients": grads, "runs": runs}


SAME = {(d, w): (1.0, 1.02) for d in (2, 6) for w in (False, True)}


def ffn(narrow=(0.6, 0.62), wide=(0.3, 0.31), dead=(0.05, 0.06), gelu_time=3.0):
    runs = {"ReLU, d_ff = 1×": rows(val_nll=list(narrow), dead_share=[0.0, 0.0], dead_share_at_init=[0.0, 0.0]),
            "ReLU, d_ff = 4×": rows(val_nll=list(wide), dead_share=list(dead), dead_share_at_init=[0.0, 0.0]),
            "GELU, d_ff = 4×": rows(val_nll=[0.3, 0.31]),
            "SwiGLU, d_ff = 4× · 2/3": rows(val_nll=[0.3, 0.31])}
    timing = {"ReLU": dict(activation_us=1.0, ffn_us=10.0, parameters=100),
              "GELU": dict(activation_us=gelu_time, ffn_us=10.5, parameters=100),
              "SwiGLU": dict(activation_us=2.0, ffn_us=10.2, parameters=100)}
    return {"runs": runs, "ratios": [1, 4], "timings": timing}


def warmup(post=((3.6, 3.6), (1.0, 1.02), (1.1, 1.12)), pre=((1.5, 1.52), (1.0, 1.02), (1.0, 1.01)),
           post_val=None, pre_val=None):
    """Final losses per seed for warm-up 0 / short / long; held-out NLLs default to a trained model's."""
    runs = {}
    for name, losses, vals in (("post-LN", post, post_val), ("pre-LN", pre, pre_val)):
        for i, w in enumerate((1, 24, 120)):
            val = list(vals[i]) if vals else [0.5, 0.5]
            runs[f"{name}, warm-up {0 if w == 1 else w}"] = rows(losses=[[5.0] * 9 + [x] for x in losses[i]], val_nll=val)
    return {"runs": runs, "warmups": [1, 24, 120], "lr": 0.01, "depth": 2, "unigram_entropy": 3.37}


def dropout(p0=(0.5, 0.52), p1=(0.3, 0.31), on=(0.6, 0.61)):
    def r(val, val_on):
        return rows(val_nll=list(val), val_nll_dropout_on=list(val_on), exact_match=[0.5, 0.5],
                    exact_match_dropout_on=[0.3, 0.3], train_nll=[0.1, 0.1], losses=[[1.0], [1.0]])
    return {"runs": {"p = 0": r(p0, (0.9, 0.9)), "p = 0.1": r(p1, on), "p = 0.3": r((0.4, 0.41), (0.9, 0.9))},
            "ps": [0.0, 0.1, 0.3], "n_train": 531, "n_test": 200, "years": [2000, 2001]}


CASES = [
    ("layernorm", layernorm(), "confirmed"),
    ("layernorm", layernorm(shift=0.05), "partly"),  # statistics barely move: padding part fails
    ("layernorm", layernorm(masked=((0.31, 0.32), (0.3, 0.31))), "partly"),  # no small-batch effect
    # BatchNorm worse, but by as much at both batch sizes and with or without padding in its statistics
    ("layernorm", layernorm(padded=((0.8, 0.82), (0.7, 0.72)), masked=((0.8, 0.82), (0.7, 0.72))), "inconclusive"),
    ("layernorm", layernorm(padded=((0.3, 0.31), (0.2, 0.21)), masked=((0.3, 0.31), (0.2, 0.21))), "refuted"),

    ("norm-position", norm_position(), "partly"),
    ("norm-position", norm_position(post={**SAME, (6, False): (0.5, 0.51)}, pre=SAME), "confirmed"),
    ("norm-position", norm_position(post=SAME, pre=SAME), "inconclusive"),
    ("norm-position", norm_position(paper=False), "refuted"),

    ("ffn", ffn(), "confirmed"),
    ("ffn", ffn(dead=(0.001, 0.002)), "partly"),
    ("ffn", ffn(narrow=(0.3, 0.31)), "partly"),  # width inside the spread
    ("ffn", ffn(narrow=(0.2, 0.21)), "refuted"),  # the narrow FFN is better
    ("ffn", ffn(narrow=(0.3, 0.31), dead=(0.0, 0.0), gelu_time=1.05), "refuted"),  # nothing holds

    ("warmup", warmup(), "confirmed"),
    ("warmup", warmup(pre=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02))), "partly"),  # pre-LN does not need it
    ("warmup", warmup(post=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02)), pre=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02))),
     "inconclusive"),
    ("warmup", warmup(post=((0.8, 0.81), (1.0, 1.01), (1.0, 1.02)), pre=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02))),
     "refuted"),
    # a collapsed run (held-out NLL at the unigram entropy) is a failure even inside the loss spread
    ("warmup", warmup(post=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02)), pre=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02)),
                      post_val=((3.4, 0.5), (0.5, 0.5), (0.5, 0.5))), "partly"),

    ("dropout", dropout(), "confirmed"),
    ("dropout", dropout(p1=(0.5, 0.51)), "partly"),
    ("dropout", dropout(on=(0.3, 0.31)), "partly"),
    ("dropout", dropout(p1=(0.5, 0.51), on=(0.5, 0.51)), "inconclusive"),
    ("dropout", dropout(p1=(0.7, 0.71)), "refuted"),
    ("dropout", dropout(on=(0.1, 0.11)), "refuted"),
]


def test_every_outcome_a_rule_can_reach_is_covered():
    reached = {(e, o) for e, _, o in CASES}
    for exp_id in CLASSES:
        outcomes = {o for e, o in reached if e == exp_id}
        assert {"confirmed", "partly", "refuted"} <= outcomes, exp_id


def test_a_diverged_run_counts_as_no_better_than_untrained():
    m = warmup(post=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02)), pre=((1.0, 1.02), (1.0, 1.01), (1.0, 1.02)))
    m["runs"]["post-LN, warm-up 0"][0].update(diverged=True, val_nll=float("nan"))
    verdict = Warmup().verdict(m)
    assert verdict.deciding["warm-up helps post-LN"] is True


# --- the measurements' helpers, on inputs whose answer is known ---------------------------------

def test_mean_shift_of_padding_is_its_share_times_its_offset():
    real_values = torch.tensor([-1.0, 1.0, -1.0, 1.0])  # mean 0, std 1
    x = torch.cat([real_values, torch.full((4,), 3.0)]).reshape(1, 8, 1)  # half padding, at 3
    real = torch.tensor([[True] * 4 + [False] * 4])
    assert abs(mean_shift(x, real) - 1.5) < 1e-3  # all-position mean 1.5 = 1.5 σ from the real mean
    assert abs(mean_shift(x, real, mean=torch.tensor([0.5])) - 0.5) < 1e-3


def test_dead_share_counts_the_units_that_never_fire():
    _, test, vocab = dates_data((1900, 2099), 20)
    torch.manual_seed(0)
    model = Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), pad_id=vocab.pad_id))
    before = dead_share(model, test, vocab)
    with torch.no_grad():
        for ffn in [layer.ffn for layer in model.encoder.layers] + [layer.ffn for layer in model.decoder.layers]:
            ffn.w_1.bias[:128] = -1e4  # a quarter of the 512 units can never fire
    after = dead_share(model, test, vocab)
    assert 0.25 <= after <= before + 0.25 + 1e-6


def test_the_paper_configuration_is_post_ln():
    assert paper_config_is_post_ln()
