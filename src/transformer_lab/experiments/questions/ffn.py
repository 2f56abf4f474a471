"""`ffn`: the feed-forward network and its activation.

FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (§3.3): each position is expanded from d_model to d_ff = 4·d_model,
passed through ReLU, and shrunk back. The canon: expand then shrink; ReLU is cheap but has dead
neurons (a unit whose pre-activation is negative on every input passes no gradient and never recovers).
Measured on the date task's model: held-out NLL at d_ff = 1× and 4× d_model (ReLU), and at 4× with
GELU and with SwiGLU at 2/3 of the width (the same parameter count, Shazeer 2020); the share of ReLU
units that never fire on the held-out dates after training (and at initialisation); the time of the
activation alone and of the whole FFN, ReLU against GELU and SwiGLU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from transformer_lab.data.batches import make_batch
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.experiments.training import dates_data, train_dates, values
from transformer_lab.models.presets import PRESETS, preset
from transformer_lab.models.transformer import Transformer
from transformer_lab.nn.feedforward import PositionwiseFeedForward, gated_width

D_MODEL = PRESETS["tiny"]["d_model"]
DEAD_SHARE = 0.01  # "has dead neurons": at least 1% of the hidden units never fire
CHEAP = 1.2  # "cheap": GELU takes at least 1.2× ReLU's time


def variants(ratios: list[int]) -> dict[str, dict[str, Any]]:
    """ReLU at each expansion ratio; GELU and SwiGLU (equal parameters) at the paper's 4×."""
    out = {f"ReLU, d_ff = {r}×": {"d_ff": r * D_MODEL, "activation": "relu"} for r in ratios}
    out["GELU, d_ff = 4×"] = {"d_ff": 4 * D_MODEL, "activation": "gelu"}
    out["SwiGLU, d_ff = 4× · 2/3"] = {"d_ff": gated_width(4 * D_MODEL), "activation": "swiglu"}
    return out


@torch.no_grad()
def dead_share(model: Transformer, pairs, vocab) -> float:
    """Share of the FFN hidden units (all layers) whose ReLU input is <= 0 on every real held-out token."""
    model.eval()
    batch = make_batch(pairs, vocab)
    real = {"enc": batch.src != vocab.pad_id, "dec": batch.tgt_in != vocab.pad_id}
    alive: list[torch.Tensor] = []

    def watch(side: str):
        def hook(module, args, output):  # output: (B, L, d_ff), the pre-activation
            alive.append((output[real[side]] > 0).any(0))  # (d_ff,)
        return hook

    handles = [layer.ffn.w_1.register_forward_hook(watch("enc")) for layer in model.encoder.layers]
    handles += [layer.ffn.w_1.register_forward_hook(watch("dec")) for layer in model.decoder.layers]
    try:
        model(batch.src, batch.tgt_in)
    finally:
        for h in handles:
            h.remove()
    units = torch.cat(alive)
    return float((~units).float().mean())


def best_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Seconds of the fastest of ``repeats`` calls of each function, the functions taking turns (so a
    change in the machine's load falls on all of them alike; the fastest call is the least disturbed)."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: math.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def timings(tokens: int, repeats: int, seed: int) -> dict[str, dict[str, float]]:
    """Forward + backward microseconds per token, on one thread: the activation alone on (tokens, 4·D)
    pre-activations, and the whole FFN at equal parameters. One thread, because on a busy machine the
    threads of an element-wise kernel wait on each other far longer than it computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _timings(tokens, repeats, seed)
    finally:
        torch.set_num_threads(threads)


def _timings(tokens: int, repeats: int, seed: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    d_ff = 4 * D_MODEL
    h = torch.randn(tokens, d_ff, requires_grad=True)
    gate, value = (torch.randn(tokens, gated_width(d_ff), requires_grad=True) for _ in range(2))
    acts = {"ReLU": lambda: F.relu(h).sum().backward(), "GELU": lambda: F.gelu(h).sum().backward(),
            "SwiGLU": lambda: (F.silu(gate) * value).sum().backward()}
    x = torch.randn(tokens, D_MODEL, requires_grad=True)
    ffns = {"ReLU": PositionwiseFeedForward(D_MODEL, d_ff, "relu"), "GELU": PositionwiseFeedForward(D_MODEL, d_ff, "gelu"),
            "SwiGLU": PositionwiseFeedForward(D_MODEL, gated_width(d_ff), "swiglu")}
    act = best_times(acts, repeats)
    ffn = best_times({name: lambda f=f: f(x).sum().backward() for name, f in ffns.items()}, repeats)
    return {name: {"activation_us": 1e6 * act[name] / tokens, "ffn_us": 1e6 * ffn[name] / tokens,
                   "parameters": sum(p.numel() for p in ffns[name].parameters())} for name in acts}


class FeedForward(Experiment):
    id = "ffn"
    question_zh = "简单描述一下Transformer中的前馈神经网络？使用了什么激活函数？相关优缺点？"
    question = "The FFN and its activation"
    claim = "expand then shrink; ReLU is cheap but has dead neurons"
    rule = ("The date task's model with ReLU at d_ff = 1× and 4× d_model (more ratios at full), and at 4× with GELU "
            "and with SwiGLU at 2/3 of the width (equal parameters). Expansion: ReLU at 4× ends with a lower held-out "
            "NLL than at 1×, beyond the spread over seeds. Dead neurons: after training, the share of the 4× ReLU "
            f"FFNs' hidden units that never fire on a real held-out token is at least {DEAD_SHARE:.0%} (mean over seeds "
            f"minus the spread). Cheap: GELU's forward + backward on the same pre-activations takes at least {CHEAP}× "
            "ReLU's (best of repeats). Confirmed if all three hold; refuted if the 1× model ends lower beyond the "
            "spread, or none holds; partly otherwise. GELU's and SwiGLU's NLL against ReLU's (do dead units cost "
            "quality?) and the whole FFN's time are reported, not part of the rule.")
    budgets = {"smoke": dict(ratios=[1, 4], steps=8, seeds=1, n_test=20, tokens=256, repeats=3),
               "quick": dict(ratios=[1, 4], steps=300, seeds=2, n_test=100, tokens=4096, repeats=20),
               "full": dict(ratios=[1, 2, 4, 8], steps=1500, seeds=3, n_test=1000, tokens=4096, repeats=50)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        _, test, vocab = dates_data((1900, 2099), s["n_test"])
        held_out = test[:200]
        runs: dict[str, list[dict]] = {}
        vs = variants(s["ratios"])
        bar = ctx.bar(len(vs) * s["seeds"], self.id)
        for name, overrides in vs.items():
            rows = []
            for i in range(s["seeds"]):
                run = train_dates(ctx.seed + i, s["steps"], overrides, n_test=s["n_test"], device=ctx.device)
                row = dict(seed=ctx.seed + i, val_nll=run.val_nll, exact_match=run.exact_match, diverged=run.diverged,
                           losses=run.losses)
                if overrides["activation"] == "relu" and not run.diverged:
                    row["dead_share"] = dead_share(run.model.cpu(), held_out, vocab)
                    torch.manual_seed(ctx.seed + i)
                    untrained = Transformer(preset("tiny", src_vocab_size=len(vocab), tgt_vocab_size=len(vocab),
                                                   pad_id=vocab.pad_id, **overrides))
                    row["dead_share_at_init"] = dead_share(untrained, held_out, vocab)
                rows.append(row)
                bar.update(1)
            runs[name] = rows
        bar.close()
        return {"runs": runs, "ratios": s["ratios"], "timings": timings(s["tokens"], s["repeats"], ctx.seed)}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        runs = m["runs"]
        narrow, paper = "ReLU, d_ff = 1×", "ReLU, d_ff = 4×"
        expand = differs(values(runs[narrow], "val_nll"), values(runs[paper], "val_nll"))
        dead = [r.get("dead_share", 0.0) for r in runs[paper]]
        dead_mean, dead_spread = mean_spread(dead)
        has_dead = dead_mean - dead_spread >= DEAD_SHARE
        t = m["timings"]
        ratio = t["GELU"]["activation_us"] / t["ReLU"]["activation_us"]
        cheap = ratio >= CHEAP
        holds = [expand > 0, has_dead, cheap]
        nll = {n: fmt(*mean_spread(values(runs[n], "val_nll"))) for n in runs}
        because = (f"held-out NLL ReLU 1× {nll[narrow]}, 4× {nll[paper]}, GELU {nll['GELU, d_ff = 4×']}, SwiGLU at equal "
                   f"parameters {nll['SwiGLU, d_ff = 4× · 2/3']}; {fmt(100 * dead_mean, 100 * dead_spread, 2)}% of the "
                   f"ReLU units never fire on the held-out dates after training; GELU takes {ratio:.2f}× ReLU's time "
                   f"(activation alone), {t['GELU']['ffn_us'] / t['ReLU']['ffn_us']:.2f}× for the whole FFN")
        if expand < 0 or not any(holds):
            outcome = "refuted"
        elif all(holds):
            outcome = "confirmed"
        else:
            outcome = "partly"
        return Verdict(outcome, because, {"4× beats 1× (beyond spread)": expand > 0,
                                          "dead ReLU units after training": f"{100 * dead_mean:.2f}% ± {100 * dead_spread:.2f}",
                                          "GELU / ReLU time, activation / FFN": f"{ratio:.2f} / "
                                          f"{t['GELU']['ffn_us'] / t['ReLU']['ffn_us']:.2f}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "ffn.png"
        with figure(path, "The FFN: width and activation on the date task, dead ReLU units, and cost", ncols=3,
                    width=5.0) as (a1, a2, a3):
            names = list(m["runs"])
            stats = [mean_spread(values(m["runs"][n], "val_nll")) for n in names]
            a1.barh(range(len(names)), [x[0] for x in stats], xerr=[x[1] for x in stats])
            a1.set_yticks(range(len(names)), names, fontsize=8)
            a1.set_xlabel("held-out NLL per token (nats; whiskers: spread)")
            relu = [n for n in names if n.startswith("ReLU")]
            for key, label in (("dead_share_at_init", "at initialisation"), ("dead_share", "after training")):
                st = [mean_spread([100 * r.get(key, 0.0) for r in m["runs"][n]]) for n in relu]
                a2.errorbar(range(len(relu)), [x[0] for x in st], yerr=[x[1] for x in st], fmt="o-", capsize=3, label=label)
            a2.set_xticks(range(len(relu)), relu, fontsize=8)
            a2.set_ylabel("ReLU units never active on held-out dates (%)")
            a2.legend(fontsize=8)
            t = m["timings"]
            acts = list(t)
            xs = range(len(acts))
            a3.bar([x - 0.2 for x in xs], [t[a]["activation_us"] for a in acts], 0.4, label="activation alone")
            a3.bar([x + 0.2 for x in xs], [t[a]["ffn_us"] for a in acts], 0.4, label="whole FFN (equal parameters)")
            a3.set_xticks(list(xs), acts)
            a3.set_ylabel("forward + backward time (µs per token)")
            a3.legend(fontsize=8)
        return [path]
