"""The data group's decision rules (bpe-wordpiece, batch-ppl, overfitting, vs-rnn), given synthetic
measurements in the shape each ``run`` returns, reach each outcome their numbers call for."""

import pytest

from transformer_lab.experiments.questions.vs_rnn import LSTM, TRANSFORMER



def tokenizers(unknown=0.001, bpe_max_count=True, wp_max_gain=True, disagree=True, wp_gain=10.0, freq_gain=100.0):
    def rows(**flags):
        return [dict(step=i, pair=["a", "b"], count=5, gain=gain, is_max_count=flags.get("count", False),
                     is_max_gain=flags.get("max_gain", False), criteria_disagree=disagree) for i, gain in
                enumerate([flags["gain"] / 2] * 2)]

    seg = dict(tokens_per_sentence=20.0, tokens_per_word=1.3, unknown_rate=unknown, unknown_word_rate=unknown)
    # the pmi score's figures are reported, not judged: its bad segmentation changes no outcome
    pmi = dict(tokens_per_sentence=40.0, tokens_per_word=2.5, unknown_rate=0.5, unknown_word_rate=0.5)
    lang = dict(lang="en", sizes=[dict(size=1000, merges=900, bpe=seg, wordpiece=seg, wordpiece_pmi=pmi)],
                bpe_replay=rows(count=bpe_max_count, gain=50.0),
                wordpiece_replay=rows(max_gain=wp_max_gain, gain=wp_gain),
                frequency_replay_wordpiece_symbols=rows(count=True, gain=freq_gain),
                pmi_replay_wordpiece_symbols=rows(gain=1.0))
    return {"langs": [lang], "replay": 2}


def batches(steps_large=(2.0, 2.02), steps_small=(2.5, 2.52), tokens_large=(2.0, 2.02), tokens_small=(1.8, 1.82)):
    return {"steps": 80, "tokens": 327680, "runs": {},
            "equal_steps": {"4": list(steps_small), "64": list(steps_large)},
            "equal_tokens": {"4": list(tokens_small), "64": list(tokens_large)},
            "gradient_cosine": {"4": 0.3, "64": 0.8}}


def fitting(base_curve=(2.9, 2.8, 3.0), base=(3.0, 3.01), more=(2.6, 2.61), reg=(2.8, 2.81), stop=(2.82, 2.83)):
    def row(final, curve=(2.9, 2.9, 2.9)):
        return dict(final_val=final, val_curve=[dict(step=10 * (i + 1), val_loss=v) for i, v in enumerate(curve)],
                    train_curve=[dict(step=s, loss=3.0 - 0.03 * s) for s in range(1, 31)])
    return {"chars": 5000, "more_data": 8, "steps": 30,
            "runs": {"baseline": [row(x, base_curve) for x in base], "more data": [row(x) for x in more],
                     "dropout + weight decay": [row(x) for x in reg], "early stopping": [row(x) for x in stop]}}


def rnn(short=(1.0, 0.8), long=(1.0, 2.0), nll_t=(1.0, 1.02), nll_r=(1.5, 1.52), g_lstm=1e-4, g_transformer=0.9):
    def decay(far):  # 17 distances: near eighth ~1, far eighth ~far
        return [1.0, 1.0, 1.0] + [1.0] * 12 + [far, far]
    return {"device": "cpu", "threads": 2, "budget_seconds": 10.0, "lstm_layers": 4,
            "speed": [dict(length=16, seconds={TRANSFORMER: short[0], LSTM: short[1]}),
                      dict(length=256, seconds={TRANSFORMER: long[0], LSTM: long[1]})],
            "equal_time_nll": {TRANSFORMER: list(nll_t), LSTM: list(nll_r)},
            "gradients": {"initialisation": {TRANSFORMER: decay(g_transformer), LSTM: decay(g_lstm)}}}


CASES = [
    ("bpe-wordpiece", tokenizers(wp_gain=200.0), "confirmed"),
    ("bpe-wordpiece", tokenizers(), "partly"),
    ("bpe-wordpiece", tokenizers(unknown=0.05), "refuted"),
    ("bpe-wordpiece", tokenizers(wp_max_gain=False), "refuted"),
    ("bpe-wordpiece", tokenizers(bpe_max_count=False), "refuted"),
    ("bpe-wordpiece", tokenizers(disagree=False), "inconclusive"),

    ("batch-ppl", batches(tokens_large=(1.5, 1.52)), "confirmed"),
    ("batch-ppl", batches(), "partly"),
    ("batch-ppl", batches(tokens_large=(1.8, 1.81)), "partly"),
    ("batch-ppl", batches(steps_large=(2.8, 2.82)), "refuted"),
    ("batch-ppl", batches(steps_large=(2.5, 2.51)), "refuted"),
    ("batch-ppl", batches(steps_large=(2.5, 2.51), tokens_large=(1.8, 1.81)), "inconclusive"),

    ("overfitting", fitting(), "confirmed"),
    ("overfitting", fitting(reg=(3.0, 3.02)), "partly"),
    ("overfitting", fitting(more=(3.0, 3.02), reg=(3.05, 3.06), stop=(3.0, 2.99)), "refuted"),
    ("overfitting", fitting(base_curve=(3.0, 2.95, 2.9)), "inconclusive"),

    ("vs-rnn", rnn(), "confirmed"),
    ("vs-rnn", rnn(long=(1.0, 0.5)), "partly"),
    ("vs-rnn", rnn(long=(1.0, 0.5), nll_t=(2.0, 2.02), g_lstm=0.95), "refuted"),
    ("vs-rnn", rnn(long=(1.0, 1.0), short=(1.0, 1.0), nll_t=(1.5, 1.51), g_lstm=0.5, g_transformer=0.9), "inconclusive"),
    # a model with no evaluation within its share of the time budget (a loaded machine): no equal-time comparison
    ("vs-rnn", rnn(nll_r=(1.5, None)), "partly"),
]


def test_every_outcome_of_each_rule_is_covered():
    for exp_id in ("bpe-wordpiece", "batch-ppl", "overfitting", "vs-rnn"):
        assert {c[2] for c in CASES if c[0] == exp_id} == {"confirmed", "partly", "refuted", "inconclusive"}


def test_the_chance_that_differs_separates_equal_variants_is_what_it_says():
    """Oracle: 20,000 simulated pairs of seed sets drawn from one distribution; ``differs`` calls them apart
    as often as ``chance_of_separation`` says (1/3 with 2 seeds a side, 1/10 with 3), within 3 standard errors
    (its 1% margin only lowers the rate; the draws are centred far from 0, so the margin is small)."""
    import random

    from transformer_lab.experiments.stats import chance_of_separation, differs

    rng = random.Random(0)
    for n, exact in ((2, 1 / 3), (3, 1 / 10), (5, 1 / 126)):
        assert chance_of_separation(n, n) == pytest.approx(exact)
        trials = 20_000
        hits = sum(differs([rng.gauss(100, 5) for _ in range(n)], [rng.gauss(100, 5) for _ in range(n)]) != 0
                   for _ in range(trials))
        se = (exact * (1 - exact) / trials) ** 0.5
        assert hits / trials == pytest.approx(exact, abs=3 * se + 0.002)


def test_a_difference_of_accuracies_must_clear_the_held_out_sets_sampling_error():
    """Oracle: the binomial standard error of an accuracy, sqrt(p(1 - p)/n), written out here; two
    models 3 points apart with no spread over seeds are apart over 10,000 items and not over 200."""
    from transformer_lab.experiments.stats import binomial_margin, differs, learned

    assert binomial_margin(0.5, 0.53, 200) == pytest.approx(1.96 * ((0.25 + 0.53 * 0.47) / 200) ** 0.5)
    assert differs([0.53, 0.53], [0.50, 0.50]) == 1  # no n: the seeds' spread (zero) and the 1% margin
    assert differs([0.53, 0.53], [0.50, 0.50], n=10_000) == 1
    assert differs([0.53, 0.53], [0.50, 0.50], n=200) == 0
    assert differs([0.50, 0.50], [0.53, 0.53], n=200) == 0
    assert learned([0.60, 0.61], 0.55, n=5000) and not learned([0.60, 0.61], 0.55, n=100)
    # the baseline is a fixed number of the items: only the model's accuracy is a sample (one-sample error,
    # 1.96 sqrt(0.55 · 0.45 / 300) = 0.056 here; two-sample would be 0.080)
    assert learned([0.62, 0.62], 0.55, n=300)
    with pytest.raises(ValueError, match="at least one held-out item"):
        binomial_margin(0.5, 0.5, 0)
    with pytest.raises(ValueError, match="proportions"):  # percentages with a count: refused, not clamped
        differs([62.0, 63.0], [55.0, 55.0], n=300)


def test_one_way_of_combining_a_claims_parts():
    from transformer_lab.experiments.stats import outcome_of

    assert outcome_of([1, 1]) == "confirmed"
    assert outcome_of([1, 0]) == outcome_of([1, -1]) == "partly"  # a part that holds is never lost to one against
    assert outcome_of([-1, 0]) == outcome_of([-1, -1]) == "refuted"
    assert outcome_of([0, 0]) == "inconclusive"
    with pytest.raises(ValueError):
        outcome_of([])


def test_means_and_spreads_print_their_significant_digits():
    from transformer_lab.experiments.stats import fmt

    assert fmt(0.2, 0.0178) == "0.200 ± 0.0178"  # trailing zeros kept
    assert fmt(47.0, 3.3, digits=2) == "47 ± 3.3"  # no bare point
    assert fmt(1234.5, 0.0) == "1.23e+03 ± 0.00"
