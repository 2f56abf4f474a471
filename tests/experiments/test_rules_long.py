"""The long-sequence group's decision rules (positions) on synthetic measurements in the exact shape
their runs return, and the pieces the runs are built from."""

import torch

from transformer_lab.experiments.questions.positions import ENCODINGS, can_run, keeps
from transformer_lab.models.gpt import GPT, GPTConfig


def positions(**per_encoding):
    """Loss at L, 2L, 4L, 8L for each encoding (two seeds, spread 0.005); by default every relative
    encoding keeps its loss (falls with more context), sinusoidal climbs and learned stops at L."""
    base = {"sinusoidal": (1.60, 1.9, 2.6, 3.2), "learned": (1.58, None, None, None), "rotary": (1.55, 1.9, 2.4, 2.9),
            "alibi": (1.57, 1.54, 1.53, 1.53), "t5": (1.56, 1.55, 1.55, 1.56), "shaw": (1.58, 1.57, 1.57, 1.57)}
    base.update(per_encoding)
    loss = {e: {str(f): (None if v is None else [v - 0.005, v + 0.005]) for f, v in zip((1, 2, 4, 8), base[e])}
            for e in ENCODINGS}
    return {"context": 64, "factors": [1, 2, 4, 8], "loss": loss, "curves": {}}


CASES = [
    ("positions", positions(), "confirmed"),
    ("positions", positions(sinusoidal=(1.60, 1.6, 1.59, 1.6)), "partly"),  # absolute positions extrapolate too
    ("positions", positions(alibi=(1.57, 1.8, 2.2, 2.6)), "partly"),  # ALiBi does not, T5 and Shaw do
    ("positions", positions(alibi=(1.57, 1.8, 2.2, 2.6), t5=(1.56, 1.8, 2.2, 2.6), shaw=(1.58, 1.8, 2.2, 2.6)),
     "refuted"),
]


def test_keeps_and_can_run():
    m = positions()
    assert keeps(m, "alibi", 4) and not keeps(m, "sinusoidal", 4) and keeps(m, "learned", 4) is None
    learned = GPT(GPTConfig(vocab_size=11, max_len=8, d_model=16, n_heads=2, n_layers=1, d_ff=32))
    alibi = GPT(GPTConfig(vocab_size=11, max_len=8, d_model=16, n_heads=2, n_layers=1, d_ff=32, position="alibi"))
    assert can_run(learned, 8) and not can_run(learned, 9) and can_run(alibi, 64)
    assert alibi(torch.randint(0, 11, (1, 64))).shape == (1, 64, 11)
