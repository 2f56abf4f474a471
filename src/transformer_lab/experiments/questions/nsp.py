"""`nsp`: next-sentence prediction's problems; can it be removed?

BERT's NSP pairs sentence A with its successor half of the time (IsNext) and with a sentence of
another document otherwise (NotNext), §3.1 and Appendix A.2. Measured on the small BERT and
tiny-shakespeare, built as tasks/pretrain_bert builds them:

- the share of NotNext pairs ``make_pairs`` produces, BERT's reference recipe (the canon says negatives
  "may far outnumber" positives): half of the chunks of several sentences and every chunk of one, so
  more than half on a corpus of short documents; at the pairs' length here and at BERT's 128 and 512;
- pre-training on the same pairs for the same steps with the NSP loss and without it (MLM alone,
  the inputs unchanged, so the loss is the only difference), then the same SST-2 fine-tuning from
  each: dev accuracy over seeds;
- the time of a training step (forward and backward) with and without the NSP loss, interleaved on
  the same batches: what the NSP head costs. (The model computes its NSP logits either way; that is
  a 128x128 and a 128x2 matrix product on one vector per pair, ~0.02% of a step's arithmetic.)
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._bert_small import (
    PAIR_LEN,
    corpus,
    encoded_corpus,
    finetune_pretrained,
    majority_share,
    pretrain,
    pretrain_source,
    pretrained_model,
)
from transformer_lab.data.mlm import held_out_documents, make_pairs
from transformer_lab.experiments.stats import differs, fmt, learned, mean_spread
from transformer_lab.tasks.pretrain_bert import pretrain_loss

VARIANTS = {"with NSP": True, "without NSP": False}
BERT_LENGTHS = (128, 512)  # BERT's two pre-training phases' sequence lengths
FAR_OUTNUMBER = 2 / 3  # "far outnumber": at least two NotNext pairs per IsNext pair
COSTLY = 1.05  # "adds cost": a training step at least 5% slower


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(model: torch.nn.Module, batches: list, device: torch.device) -> dict[str, list[float]]:
    """Seconds of one forward + backward per batch, with and without the NSP loss, the two interleaved
    (alternating which goes first) so that a change in the machine's load hits both alike."""
    model.train()
    out: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for k, b in enumerate(batches):
        order = list(VARIANTS) if k % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            loss_fn = pretrain_loss(VARIANTS[name])
            model.zero_grad(set_to_none=True)
            sync(device)
            t0 = time.perf_counter()
            loss_fn(model, b, device).loss.backward()
            sync(device)  # a GPU runs behind the Python that queued the work
            out[name].append(time.perf_counter() - t0)
    return out


def time_ratio(m: dict[str, Any]) -> float:
    """Median over batches of (step time with NSP) / (step time without)."""
    return statistics.median(w / wo for w, wo in zip(m["step_seconds"]["with NSP"], m["step_seconds"]["without NSP"]))


class NSP(Experiment):
    id = "nsp"
    question_zh = "Bert中NSP可能的问题有些哪些？如何改进？可以去掉NSP训练任务吗？"
    question = "NSP's problems; can it be removed?"
    claim = "\"negative samples may far outnumber positives\"; NSP adds cost; can be dropped"
    rule = ("Three parts, on the small BERT and tiny-shakespeare pairs built as tasks/pretrain_bert builds them. "
            "Negatives: the NotNext share of the training pairs is at least 2/3. Cost: the median time of a training "
            "step (forward and backward, same batches, interleaved) with the NSP loss is at least 1.05 times the time "
            "without it. Dropping: after pre-training on the same pairs for the same steps with and without the NSP "
            "loss and the same SST-2 fine-tuning, the dev accuracy without NSP is not lower than with it beyond the "
            "noise (the spread over seeds, and the sampling error of an accuracy over the dev sentences); not "
            "measured if a fine-tuned model is no better than the majority label beyond that noise. Confirmed if all three parts hold, refuted if none does, partly otherwise.")
    budgets = {"smoke": dict(steps=6, seeds=1, ft_train=64, ft_dev=64, ft_steps=4, timing_batches=4, held_batches=2),
               "quick": dict(steps=300, seeds=2, ft_train=2000, ft_dev=500, ft_steps=150, timing_batches=20,
                             held_batches=10),
               "full": dict(steps=2000, seeds=3, ft_train=8000, ft_dev=2000, ft_steps=600, timing_batches=60,
                            held_batches=21)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        data = corpus()
        negative = sum(p.not_next for p in data.train_pairs) / len(data.train_pairs)
        encoded, _ = encoded_corpus()
        train_docs = sorted(set(range(len(encoded))) - held_out_documents(len(encoded)))
        at_length = {}
        for n in BERT_LENGTHS:  # the same documents cut for BERT's own lengths
            pairs = make_pairs(encoded, random.Random(0), only=train_docs, pool=train_docs, max_len=n)
            at_length[str(n)] = sum(p.not_next for p in pairs) / len(pairs)
        device = str(ctx.device)
        bar = ctx.bar(len(VARIANTS) * s["seeds"] + 1, self.id)
        runs: dict[str, list[dict]] = {}
        for name, nsp in VARIANTS.items():
            rows = []
            for seed in range(ctx.seed, ctx.seed + s["seeds"]):
                pre = pretrain(seed, s["steps"], nsp=nsp, device=device, held_batches=s["held_batches"])
                acc = finetune_pretrained(pre, seed, s["ft_train"], s["ft_dev"], s["ft_steps"], device)
                rows.append(dict(seed=seed, **{f"held_{k}": v for k, v in pre.held.items()}, finetune_acc=acc))
                bar.update(1)
            runs[name] = rows
        # the cost of the head: one model with both heads, the same batches timed both ways
        model = pretrained_model(pretrain(ctx.seed, s["steps"], nsp=True, device=device,
                                          held_batches=s["held_batches"]), device)
        source = pretrain_source(ctx.seed)
        seconds = step_seconds(model, [source.make(ix) for ix in source.epoch(1)[:s["timing_batches"]]], ctx.device)
        bar.update(1)
        bar.close()
        return {"steps": s["steps"], "negative_share": negative, "pairs": len(data.train_pairs), "pair_len": PAIR_LEN,
                "negative_share_at": at_length, "runs": runs,
                "finetune": {"sentences": s["ft_train"], "dev_sentences": s["ft_dev"], "steps": s["ft_steps"],
                             "majority_share": majority_share(s["ft_dev"])},
                "step_seconds": seconds}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        share = m["negative_share"]
        ratio = time_ratio(m)
        with_nsp = [r["finetune_acc"] for r in m["runs"]["with NSP"]]
        without = [r["finetune_acc"] for r in m["runs"]["without NSP"]]
        nsp_acc = mean_spread([r["held_nsp_acc"] for r in m["runs"]["with NSP"]])[0]
        majority, n_dev = m["finetune"]["majority_share"], m["finetune"]["dev_sentences"]
        d = differs(without, with_nsp, n_dev)
        compared = learned(without, majority, n_dev) and learned(with_nsp, majority, n_dev)  # (else a side learned nothing)
        parts = {"negatives far outnumber positives": share >= FAR_OUTNUMBER, "NSP adds cost": ratio >= COSTLY,
                 "NSP can be dropped": d >= 0 if compared else None}
        at = m.get("negative_share_at", {})  # (results measured before the reference's pairs have neither)
        lengths = "".join(f", {v:.1%} at {n}" for n, v in at.items())
        because = (f"{share:.1%} of our {m['pairs']:,} training pairs are NotNext"
                   + (f" at {m['pair_len']} tokens{lengths} (BERT's recipe: half of the chunks of several "
                      "sentences, every chunk of one)" if "pair_len" in m else " (BERT's 50%)")
                   + "; a training step with "
                   f"the NSP loss takes {ratio:.3f}× the time of one without; SST-2 dev accuracy after the same "
                   f"fine-tuning is {fmt(*mean_spread(without))} pre-trained without NSP against "
                   f"{fmt(*mean_spread(with_nsp))} with it (majority label {m['finetune']['majority_share']:.3g}; "
                   f"held-out NSP accuracy {nsp_acc:.3g})")
        if not compared:
            because += ("; a fine-tuned model stayed at the majority label, so whether NSP can be dropped is not "
                        "measured")
        measured = [v for v in parts.values() if v is not None]
        held = sum(measured)
        outcome = "confirmed" if held == len(measured) == 3 else "refuted" if held == 0 else "partly"
        return Verdict(outcome, because, {**parts, "NotNext share": round(share, 4),
                                          "step time with / without NSP": round(ratio, 3),
                                          "SST-2 dev accuracy without / with NSP":
                                              f"{mean_spread(without)[0]:.3f} / {mean_spread(with_nsp)[0]:.3f}"})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "nsp.png"
        names = list(VARIANTS)
        with figure(path, "Pre-training with and without NSP (small BERT, tiny-shakespeare), then SST-2 fine-tuning",
                    ncols=4, width=3.6) as (a1, a2, a3, a4):
            share = m["negative_share"]
            a1.bar_label(a1.bar(["IsNext", "NotNext"], [100 * (1 - share), 100 * share]), fmt="%.1f", padding=6)
            a1.set_ylabel("share of training pairs (%)")
            a1.set_title(f"NSP pairs as make_pairs builds them ({m['pairs']:,})"
                         + "".join(f"\nNotNext at {n} tokens: {100 * v:.1f}%" for n, v in m.get("negative_share_at", {}).items()),
                         fontsize=9)
            for ax, key, label in ((a2, "finetune_acc", "SST-2 dev accuracy after fine-tuning (%)"),
                                   (a3, "held_mlm_acc", "held-out MLM accuracy after pre-training (%)")):
                stats = [mean_spread([100 * r[key] for r in m["runs"][n]]) for n in names]
                ax.bar_label(ax.bar(names, [x[0] for x in stats], yerr=[x[1] for x in stats], capsize=4), fmt="%.1f", padding=6)
                ax.set_ylabel(label)
                ax.set_title("mean over seeds, whiskers: spread", fontsize=9)
            a2.axhline(100 * m["finetune"]["majority_share"], color="grey", ls=":", lw=1, label="majority label")
            a2.set_ylim(bottom=40)
            a2.legend(fontsize=8, loc="lower right")
            times = [1000 * statistics.median(m["step_seconds"][n]) for n in names]
            a4.bar_label(a4.bar(names, times), fmt="%.1f", padding=6)
            a4.set_ylabel("forward + backward per batch (ms, median)")
            a4.set_title(f"time with / without NSP: {time_ratio(m):.3f}×", fontsize=9)
        return [path]
