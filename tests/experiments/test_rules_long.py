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


def long_sequences(sdpa_t=2.0, dense_m=2.0, sdpa_m=2.0, window_t=1.0, window_m=1.0, window_loss=(2.10, 2.12),
                   faster=True):
    """Cost rows for n = 4096, 8192 growing with the given exponents, and the equal-time losses."""
    rows = []
    for impl, te, me in (("sdpa", sdpa_t, sdpa_m), ("dense", 2.0, dense_m), ("chunked", 2.0, 1.0),
                         ("window", window_t, window_m), ("block", 1.0, 1.0)):
        base_t = 0.5 if impl in ("sdpa", "dense", "chunked") else (0.1 if faster else 5.0)
        for n in (4096, 8192):
            f = n / 4096
            rows.append({"impl": impl, "n": n, "seconds": base_t * f ** te, "peak_mib": 100 * f ** me})
    return {"lengths": [4096, 8192], "window": 256, "cost": rows, "context": 1024, "seconds": 20,
            "patterns": {}, "quality": {"full": [{"val_loss": 2.10}, {"val_loss": 2.12}],
                                        "window": [{"val_loss": window_loss[0]}, {"val_loss": window_loss[1]}],
                                        "block": [{"val_loss": 2.15}, {"val_loss": 2.16}]}}


CASES = [
    ("long-sequences", long_sequences(), "confirmed"),
    ("long-sequences", long_sequences(sdpa_m=1.0), "partly"),  # a fused kernel: linear memory
    ("long-sequences", long_sequences(window_loss=(2.4, 2.42)), "partly"),  # the window loses quality
    ("long-sequences", long_sequences(sdpa_t=1.2), "refuted"),  # full attention's time is not quadratic here
    ("long-sequences", long_sequences(faster=False), "refuted"),  # the window is slower at the largest n
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
