"""`int8`: why did industry settle on INT8, with KL calibration for long-tailed activations?

all-MiniLM-L6-v2 fine-tuned on an SST-2 sample (every weight; the peft experiment's recipe), then
quantized every way ``compression`` offers, each from the same fp32 model:

- dynamic INT8 (weights per output channel or per tensor, activations per token at run time);
- static INT8 (one activation grid per layer, calibrated on training sentences) with each observer:
  min-max, percentile (99.99), MSE-optimal, KL (TensorRT's entropy calibration); and SmoothQuant
  (alpha 0.5) with min-max;
- weight-only INT8 and INT4 (per channel; INT4 also per group of 32).

Measured per variant on fixed dev sentences: accuracy, the share of predictions that differ from the
fp32 model's ("flips"), the mean KL divergence of the output distribution from fp32's, the Linear
weights' bytes, and eval tokens/s (batch 8). The figures show where the problem is: one layer's input
histogram (log scale) with each observer's clipping threshold, the per-channel ranges (outlier
channels), and a weight histogram for contrast.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transformer_lab.bench.harness import time_rounds
from transformer_lab.compression import OBSERVERS, linear_weight_bytes, quantize_model
from transformer_lab.compression.model import PRESETS, target_linears, watch_inputs
from transformer_lab.compression.observers import Observer
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.data import minilm_folder
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._bert_small import finetune_measured, majority_share, sst2_subset
from transformer_lab.models.hf import load_bert
from transformer_lab.tasks.embed import by_length, encode_texts
from transformer_lab.tokenizers.io import load_bert_tokenizer

LABELS = {"dynamic": "dynamic int8", "dynamic-tensor": "dynamic int8, weights per tensor",
          "static-minmax": "static int8, min-max", "static-percentile": "static int8, percentile",
          "static-mse": "static int8, MSE", "static-kl": "static int8, KL", "static-smooth": "static int8, SmoothQuant",
          "w8": "weight-only int8", "w4-channel": "weight-only int4", "w4": "weight-only int4, groups of 32"}
VARIANTS = {label: PRESETS[name] for name, label in LABELS.items()}
KEEPS = dict(flips=0.02, points=0.01)  # "keeps accuracy": at most 2% of predictions flip, within 1 point
NOTHING_LEARNED = 0.05
THRESHOLDS = ("minmax", "percentile", "mse", "kl")


class _Values(Observer):
    """Keeps the inputs one layer saw (for the figures and the thresholds)."""

    def __init__(self):
        super().__init__()
        self.rows: list[torch.Tensor] = []

    def _add(self, rows: torch.Tensor) -> None:
        self.rows.append(rows.reshape(-1))


def predictions(model: nn.Module, ids: list[list[int]]) -> torch.Tensor:
    """Class probabilities (N, 2) over the dev sentences."""
    return by_length(model, ids, 64, lambda m, t, mask: m(t, attention_mask=mask).class_logits.float().softmax(-1))


def tokens_per_s(model: nn.Module, batch: int, length: int, vocab: int, rounds: int) -> float:
    """Eval-forward tokens/s on random tokens (the median of ``rounds``, after a warm-up call)."""
    tokens = torch.randint(1000, vocab, (batch, length), generator=torch.Generator().manual_seed(0))

    def run() -> None:
        with torch.no_grad():
            model(tokens)

    return tokens.numel() / time_rounds({"model": run}, 1, rounds)["model"]


class Int8(Experiment):
    id = "int8"
    question_zh = "为何在对Transformer进行参数的Quantization的时候工业界最终选择了INT8？包括KL散度、长尾分布等"
    question = "Why INT8; KL calibration; long tails"
    claim = "INT8 balances size and accuracy; KL calibration; dynamic quantization keeps accuracy"
    rule = ("all-MiniLM-L6-v2 fine-tuned on SST-2, then quantized each way from the same fp32 model; on fixed dev "
            "sentences: accuracy, flips (predictions that differ from fp32's) and the output distribution's mean KL "
            "divergence from fp32's. Three parts: (1) dynamic INT8 keeps accuracy: at most 2% flips and within 1 "
            "point of fp32; (2) INT4 is the worse balance: weight-only INT4 per channel has more output KL than "
            "weight-only INT8 and more flips than dynamic INT8 (at half the bytes); (3) KL calibration pays for "
            "long-tailed activations: static INT8 with KL has less output KL than with min-max. Confirmed if all "
            "three hold, partly if one or two, refuted if none; inconclusive if fp32 is within 5 points of the "
            "majority label.")
    budgets = {"smoke": dict(n_train=64, n_dev=32, n_calib=16, steps=2, lr=3e-4, batch_size=8, max_len=32, rounds=1),
               "quick": dict(n_train=1600, n_dev=300, n_calib=128, steps=40, lr=3e-4, batch_size=16, max_len=64,
                             rounds=3),
               "full": dict(n_train=6400, n_dev=872, n_calib=256, steps=200, lr=5e-5, batch_size=32, max_len=64,
                            rounds=5)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        folder = minilm_folder()
        tok = load_bert_tokenizer(folder)
        torch.manual_seed(ctx.seed)
        fp32 = load_bert(folder, n_labels=2, pretraining_heads=False)
        trained = finetune_measured(fp32, tok, ctx.seed, s["n_train"], s["n_dev"], s["steps"], s["lr"], s["max_len"],
                                    s["batch_size"])
        fp32 = fp32.cpu().eval()
        train_x, _, dev_x, dev_y = sst2_subset(s["n_train"], s["n_dev"])
        dev_ids = encode_texts(tok, dev_x, s["max_len"])
        calib_ids = encode_texts(tok, train_x[: s["n_calib"]], s["max_len"])
        labels = torch.tensor(dev_y)

        def calibrate(m: nn.Module) -> None:
            by_length(m, calib_ids, 16, lambda mm, t, mask: mm(t, attention_mask=mask).class_logits)

        bar = ctx.bar(len(VARIANTS) + 2, self.id)
        inputs = self._inputs(fp32, calibrate)
        bar.update(1)
        p32 = predictions(fp32, dev_ids)
        vocab = fp32.config.vocab_size
        rows = {"fp32": dict(accuracy=float((p32.argmax(-1) == labels).float().mean()), flips=0.0, output_kl=0.0,
                             linear_bytes=linear_weight_bytes(fp32),
                             tokens_per_s=tokens_per_s(fp32, 8, s["max_len"], vocab, s["rounds"]))}
        bar.update(1)
        for name, cfg in VARIANTS.items():
            q = quantize_model(copy.deepcopy(fp32), cfg, calibrate=calibrate).eval()
            p = predictions(q, dev_ids)
            kl = F.kl_div(p.clamp_min(1e-12).log(), p32, reduction="batchmean")
            rows[name] = dict(accuracy=float((p.argmax(-1) == labels).float().mean()),
                              flips=float((p.argmax(-1) != p32.argmax(-1)).float().mean()), output_kl=float(kl),
                              linear_bytes=linear_weight_bytes(q),
                              tokens_per_s=tokens_per_s(q, 8, s["max_len"], vocab, s["rounds"]))
            bar.update(1)
        bar.close()
        return {"n_dev": s["n_dev"], "steps": s["steps"], "finetune_accuracy": trained.accuracy,
                "majority_share": majority_share(s["n_dev"]), "rows": rows, **inputs}

    @staticmethod
    def _inputs(model: nn.Module, calibrate) -> dict[str, Any]:
        """The Linear input with the most extreme outlier channel (its largest channel range over the
        median channel's): a sample of its values, each observer's threshold, every channel's range; and
        that layer's weights for contrast."""
        names = target_linears(model)
        seen = watch_inputs(model, names, lambda n: _Values(), calibrate)
        stats = {}
        for n, obs in seen.items():
            x = torch.cat(obs.rows).reshape(-1, model.get_submodule(n).in_features)
            ranges = x.abs().amax(dim=0)
            stats[n] = (float(ranges.max() / ranges.median().clamp_min(1e-8)), x, ranges)
        layer = max(stats, key=lambda n: stats[n][0])
        ratio, x, ranges = stats[layer]
        thresholds = {}
        for kind in THRESHOLDS:
            obs = OBSERVERS[kind](bits=8, symmetric=True) if kind == "minmax" else \
                OBSERVERS[kind](bits=8, symmetric=True, max_values=1 << 18)
            obs.observe(x)
            lo, hi = obs.range()
            thresholds[kind] = float(hi.reshape(-1)[0])
        flat = x.reshape(-1)
        sample = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:50_000]]
        kurtosis = float(((flat - flat.mean()) ** 4).mean() / flat.var() ** 2)
        w = model.get_submodule(layer).weight.detach().reshape(-1)
        return {"layer": layer, "outlier_ratio": ratio, "kurtosis": kurtosis, "thresholds": thresholds,
                "values": sample.tolist(), "channel_ranges": ranges.tolist(),
                "weights": w[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))[:50_000]].tolist(),
                "weight_kurtosis": float(((w - w.mean()) ** 4).mean() / w.var() ** 2)}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        r = m["rows"]
        fp, dyn, w8, w4 = r["fp32"], r["dynamic int8"], r["weight-only int8"], r["weight-only int4"]
        kl, mm = r["static int8, KL"], r["static int8, min-max"]
        keeps = dyn["flips"] <= KEEPS["flips"] and abs(dyn["accuracy"] - fp["accuracy"]) <= KEEPS["points"]
        int4_worse = w4["output_kl"] > w8["output_kl"] and w4["flips"] > dyn["flips"]
        kl_pays = kl["output_kl"] < mm["output_kl"]
        held = [name for name, ok in (("dynamic INT8 keeps accuracy", keeps), ("INT4 is the worse balance", int4_worse),
                                      ("KL calibration beats min-max", kl_pays)) if ok]

        def row(name: str) -> str:
            x = r[name]
            return f"{name} {x['accuracy']:.3f} ({100 * x['flips']:.1f}% flips, output KL {x['output_kl']:.2g})"

        because = (f"SST-2 dev accuracy ({m['n_dev']} sentences) of the fine-tuned fp32 model {fp['accuracy']:.3f}; "
                   + "; ".join(row(n) for n in ("dynamic int8", "weight-only int8", "weight-only int4",
                                                "static int8, min-max", "static int8, KL", "static int8, SmoothQuant"))
                   + f"; the most long-tailed Linear input ({m['layer']}) has a channel {m['outlier_ratio']:.0f}x the "
                   f"median channel's range, kurtosis {m['kurtosis']:.0f} (its weights: {m['weight_kurtosis']:.1f})")
        numbers = {"parts that hold": held, "fp32 accuracy": round(fp["accuracy"], 4),
                   **{f"{k}: flips": round(v["flips"], 4) for k, v in r.items() if k != "fp32"},
                   **{f"{k}: output KL": float(f"{v['output_kl']:.3g}") for k, v in r.items() if k != "fp32"},
                   "outlier channel / median channel": round(m["outlier_ratio"], 1)}
        if fp["accuracy"] - m["majority_share"] < NOTHING_LEARNED:
            return Verdict("inconclusive", because + "; the fp32 model learned nothing to keep", numbers)
        outcome = "confirmed" if len(held) == 3 else "partly" if held else "refuted"
        return Verdict(outcome, because, numbers)

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        paths = [folder / "int8-tails.png", folder / "int8-variants.png"]
        with figure(paths[0], f"Long tails: the input of {m['layer']} (calibration sentences)", ncols=3) as (a1, a2, a3):
            values = torch.tensor(m["values"])
            a1.hist(values.numpy(), bins=200, log=True, color="tab:blue")
            for (kind, t), c in zip(m["thresholds"].items(), ("k", "tab:orange", "tab:green", "tab:red")):
                a1.axvline(t, color=c, ls="--", lw=1, label=f"{kind} {t:.3g}")
                a1.axvline(-t, color=c, ls="--", lw=1)
            a1.set_xlabel("activation value")
            a1.set_ylabel("count (log)")
            a1.legend(fontsize=7, title="8-bit range |x| <=", title_fontsize=7)
            ranges = torch.tensor(m["channel_ranges"])
            a2.scatter(range(len(ranges)), ranges.numpy(), s=3, color="tab:purple")
            a2.set_xlabel("input channel")
            a2.set_ylabel("max |x| over the calibration tokens")
            a2.set_title(f"outlier channels: the largest is {m['outlier_ratio']:.0f}x the median", fontsize=8)
            a3.hist(torch.tensor(m["weights"]).numpy(), bins=200, log=True, color="tab:gray")
            a3.set_xlabel(f"weight value (kurtosis {m['weight_kurtosis']:.1f}; activations {m['kurtosis']:.0f})")
            a3.set_ylabel("count (log)")
        rows = {k: v for k, v in m["rows"].items() if k != "fp32"}
        with figure(paths[1], "Each quantization against fp32: prediction flips and output KL by weight size",
                    ncols=2) as (b1, b2):
            for name, r in rows.items():
                b1.scatter(r["linear_bytes"] / 2**20, 100 * r["flips"], s=20)
                b1.annotate(name, (r["linear_bytes"] / 2**20, 100 * r["flips"]), fontsize=6)
                b2.scatter(r["tokens_per_s"], r["output_kl"] + 1e-9, s=20)
                b2.annotate(name, (r["tokens_per_s"], r["output_kl"] + 1e-9), fontsize=6)
            b1.axvline(m["rows"]["fp32"]["linear_bytes"] / 2**20, color="grey", ls=":", label="fp32 size")
            b1.set_xlabel("Linear weights (MiB)")
            b1.set_ylabel(f"dev predictions that differ from fp32 (%, of {m['n_dev']})")
            b1.legend(fontsize=7)
            b2.axvline(m["rows"]["fp32"]["tokens_per_s"], color="grey", ls=":")
            b2.set_xscale("log")
            b2.set_yscale("log")
            b2.set_xlabel("eval tokens/s, batch 8 (fp32: dotted line)")
            b2.set_ylabel("mean KL(fp32 || quantized) of the outputs (log)")
        return paths
