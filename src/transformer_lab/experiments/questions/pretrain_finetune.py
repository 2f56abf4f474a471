"""`pretrain-finetune`: what pre-training gives fine-tuning.

The same classifier, all-MiniLM-L6-v2's architecture (6 layers, width 384, BERT's uncased
vocabulary) with a fresh 2-label head, fine-tuned on SST-2 with the same recipe and steps: once
from the pre-trained weights (``models.hf.load_bert``), once from BERT's random initialisation of
the same architecture. Across training-set sizes; accuracy on one fixed sample of SST-2's dev set.

The PEFT half: the same two starting points with LoRA (r = 8 on W_Q and W_V; only the adapter and
the head train, 0.33% of the weights) at the largest size. A low-rank update can only steer what the
weights already compute, so it should need pre-training even more than full fine-tuning does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transformer_lab.adapters import AdapterConfig, apply_adapter
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.data import minilm_folder
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._bert_small import finetune, majority_share
from transformer_lab.experiments.stats import differs, fmt, mean_spread, outcome_of
from transformer_lab.models.bert import Bert
from transformer_lab.models.hf import load_bert
from transformer_lab.tokenizers.io import load_bert_tokenizer

INITS = ("pre-trained", "from scratch")
LR = 3e-4  # one rate for both; above BERT's 2e-5..1e-4 because of the few steps (at 1e-4, 10 steps barely move it)


def accs(m: dict[str, Any], size: int, init: str) -> list[float]:
    return next(r["accs"] for r in m["rows"] if r["size"] == size and r["init"] == init)


def lora_accs(m: dict[str, Any], init: str) -> list[float]:
    return next(r["accs"] for r in m["lora"] if r["init"] == init)


class PretrainFinetune(Experiment):
    id = "pretrain-finetune"
    question_zh = "简要描述预训练和微调(Fine-Tuning)"
    question = "Pre-training vs fine-tuning"
    claim = "pre-training transfers knowledge to small labelled sets"
    rule = ("The all-MiniLM-L6-v2 architecture with a fresh 2-label head, fine-tuned on SST-2 training sets of "
            "several sizes with the same recipe and steps, from the pre-trained weights and from a random "
            "initialisation; accuracy on one fixed SST-2 dev sample, over seeds. A size holds if the pre-trained "
            "model is more accurate beyond the noise (the spread over seeds, and the sampling error of an accuracy "
            "over the dev sentences) and goes against if the model from scratch is. Confirmed if every size holds; "
            "partly if some do; refuted if none does and one goes against; inconclusive if no difference leaves the "
            "noise (experiments.stats.outcome_of). The same comparison with LoRA (r = 8, adapter and head trained) at the largest size counts as "
            "one more size.")
    # A MiniLM step of 16 sentences costs ~0.5 s on this CPU, so quick affords ~200 steps in all: the
    # larger sets are seen in part (24 steps of 16 = 384 of the 1,600). Batches of 8 were cheaper but
    # left half the seeds at the majority label after 20 steps; batches of 16 none.
    # LoRA's rate: 1e-2 for a few dozen steps (the `peft` question's probes), adapters.LEARNING_RATES' 2e-3 for
    # hundreds.
    budgets = {"smoke": dict(sizes=[16], steps=[2], seeds=1, n_dev=32, max_len=32, batch_size=8, lora_lr=1e-2),
               "quick": dict(sizes=[100, 400, 1600], steps=[8, 16, 24], seeds=2, n_dev=200, max_len=32,
                             batch_size=16, lora_lr=1e-2),
               "full": dict(sizes=[100, 400, 1600, 6400], steps=[12, 40, 150, 300], seeds=3, n_dev=1000, max_len=48,
                            batch_size=16, lora_lr=2e-3)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        folder = minilm_folder()
        tok = load_bert_tokenizer(folder)
        bar = ctx.bar((len(s["sizes"]) + 1) * len(INITS) * s["seeds"], self.id)

        def start(init: str, seed: int) -> Bert:
            torch.manual_seed(seed)  # the head (and, from scratch, every weight)
            model = load_bert(folder, n_labels=2, pretraining_heads=False)
            if init == "from scratch":
                torch.manual_seed(seed)
                model = Bert(model.config)  # the same architecture, BERT's initialisation
            return model

        rows, lora = [], []
        for size, steps in zip(s["sizes"], s["steps"]):
            for init in INITS:
                values = []
                for i in range(s["seeds"]):
                    values.append(finetune(start(init, ctx.seed + i).to(ctx.device), tok, ctx.seed + i, size,
                                           s["n_dev"], steps, LR, s["max_len"], s["batch_size"], ctx.device))
                    bar.update(1)
                rows.append(dict(size=size, init=init, steps=steps, accs=values))
        size, steps = s["sizes"][-1], s["steps"][-1]
        for init in INITS:
            values = []
            for i in range(s["seeds"]):
                model = apply_adapter(start(init, ctx.seed + i), AdapterConfig(train="classifier", seed=ctx.seed + i))
                values.append(finetune(model.to(ctx.device), tok, ctx.seed + i, size, s["n_dev"], steps, s["lora_lr"],
                                       s["max_len"], s["batch_size"], ctx.device))
                bar.update(1)
            lora.append(dict(size=size, init=init, steps=steps, lr=s["lora_lr"], accs=values))
        bar.close()
        return {"sizes": s["sizes"], "n_dev": s["n_dev"], "batch_size": s["batch_size"], "rows": rows, "lora": lora,
                "majority_share": majority_share(s["n_dev"])}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        stats = {(n, init): mean_spread(accs(m, n, init)) for n in m["sizes"] for init in INITS}
        ds = {n: differs(accs(m, n, "pre-trained"), accs(m, n, "from scratch"), m["n_dev"]) for n in m["sizes"]}
        steps = {r["size"]: r["steps"] for r in m["rows"]}
        seen = {n: min(n, steps[n] * m["batch_size"]) for n in m["sizes"]}  # (a large set is seen in part)
        parts = [f"{n} sentences{f' ({seen[n]} seen)' if seen[n] < n else ''}: {fmt(*stats[n, 'pre-trained'])} "
                 f"pre-trained against {fmt(*stats[n, 'from scratch'])} from scratch" for n in m["sizes"]]
        because = (f"SST-2 dev accuracy ({m['n_dev']} sentences, majority label {m['majority_share']:.3g}) after "
                   f"fine-tuning on " + "; ".join(parts))
        lora_stats = {init: mean_spread(lora_accs(m, init)) for init in INITS}
        lora_d = differs(lora_accs(m, "pre-trained"), lora_accs(m, "from scratch"), m["n_dev"])
        because += (f"; with LoRA ({m['lora'][0]['size']} sentences): {fmt(*lora_stats['pre-trained'])} pre-trained "
                    f"against {fmt(*lora_stats['from scratch'])} from scratch")
        outcome = outcome_of([*ds.values(), lora_d])
        gaps = {f"pre-trained - scratch, {n} sentences":
                round(stats[n, "pre-trained"][0] - stats[n, "from scratch"][0], 4) for n in m["sizes"]}
        gaps["pre-trained - scratch, LoRA"] = round(lora_stats["pre-trained"][0] - lora_stats["from scratch"][0], 4)
        return Verdict(outcome, because, {**gaps, "sizes where pre-trained wins beyond the noise":
                                          [n for n, d in ds.items() if d > 0], "LoRA: pre-trained wins beyond the "
                                          "noise": lora_d > 0})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "pretrain_finetune.png"
        title = "Fine-tuning all-MiniLM-L6-v2 on SST-2: pre-trained weights vs random initialisation"
        with figure(path, title) as (ax,):
            for init, style in zip(INITS, ("o-", "s--")):
                stats = [mean_spread([100 * a for a in accs(m, n, init)]) for n in m["sizes"]]
                ax.errorbar(m["sizes"], [x[0] for x in stats], yerr=[x[1] for x in stats], fmt=style, capsize=4,
                            label=init)
            for init, style in zip(INITS, ("o", "s")):
                r = next(r for r in m["lora"] if r["init"] == init)
                acc = mean_spread([100 * a for a in r["accs"]])
                ax.errorbar([r["size"] * 1.12], [acc[0]], yerr=[acc[1]], fmt=style, mfc="none", capsize=4,
                            label=f"LoRA, {init}")
            ax.axhline(100 * m["majority_share"], color="grey", lw=0.8, ls=":", label="majority label")
            ax.set_xscale("log")
            steps = {r["size"]: r["steps"] for r in m["rows"]}
            ax.set_xticks(m["sizes"], [f"{n}\n({steps[n]} steps)" for n in m["sizes"]])
            ax.minorticks_off()
            ax.set_xlabel(f"SST-2 training sentences (log scale; steps of {m['batch_size']} sentences)")
            ax.set_ylabel(f"dev accuracy (%, {m['n_dev']} sentences, mean over seeds)")
            ax.legend()
        return [path]
