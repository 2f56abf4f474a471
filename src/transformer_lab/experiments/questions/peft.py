"""`peft`: do parameter-efficient methods reach full fine-tuning's quality with far fewer parameters?

all-MiniLM-L6-v2 with a fresh 2-label head, fine-tuned on one SST-2 sample five ways with the same
sentences, steps and seeds: every weight, LoRA (r = 8 on W_Q, W_V), QLoRA (the same on an NF4 base),
prefix tuning (20 positions, through its MLP) and prompt tuning (20 vectors); the head trains in full
beside each adapter. Each method at its own learning rate, chosen for the budget's length: the full
budget is ``bench peft``'s setting (200 steps of 32; ``adapters.LEARNING_RATES``, every weight at
5e-5), the quick one's 30 steps need larger rates (``QUICK_RATES``). Measured per method:

- accuracy on a fixed SST-2 dev sample;
- parameters trained, and parameters saved (an adapter file keeps the adapter and the head; a prefix
  its folded table, not the MLP);
- training-state memory: the weights as stored (NF4 for QLoRA) plus gradients and Adam's two moments of
  every trained parameter (4 bytes each), the part of training memory that PEFT changes (activations
  are alike);
- seconds per training step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from transformer_lab.adapters import (LEARNING_RATES, METHODS, AdapterConfig, apply_adapter, fold_prefix,
                                      parameter_counts)
from transformer_lab.adapters.peft_format import WEIGHTS, save_peft
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.data import minilm_folder
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._bert_small import finetune_measured, majority_share
from transformer_lab.experiments.stats import differs, fmt, mean_spread
from transformer_lab.models.hf import load_bert
from transformer_lab.tokenizers.io import load_bert_tokenizer

RATES = {"full": 5e-5, **LEARNING_RATES}
# 30 steps of 16 (SST-2 probes, seed 0, 200 dev sentences, majority 0.55): every weight 0.55 at 1e-4, 0.77 at
# 3e-4; LoRA 0.635 at 5e-3, 0.74 at 1e-2; QLoRA 0.72 at 1e-2; prompt 0.55 at 1e-1, 0.64 at 3e-1; prefix
# 0.55 at 3e-3 and at 1e-2 (above 1e-3 it diverges at 100 steps: LEARNING_RATES), so it keeps 1e-3.
QUICK_RATES = {"full": 3e-4, "lora": 1e-2, "qlora": 1e-2, "prefix": 1e-3, "prompt": 3e-1}
ALL = ("full", *METHODS)
FEW = 0.01  # "far fewer": saved parameters under 1% of the model's
NOTHING_LEARNED = 0.05  # full fine-tuning within 5 points of the majority label: nothing to compare to


def state_bytes(model: nn.Module) -> int:
    """Bytes of the weights as stored (parameters and buffers, NF4 codes and scales included) plus a
    gradient and Adam's two moments (fp32) per trained parameter."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    stored = sum(t.numel() * t.element_size() for t in tensors)
    trained = parameter_counts(model).trainable
    return stored + 3 * 4 * trained


def saved_parameters(model: nn.Module, method: str) -> int:
    """Numbers in the file a user keeps: the whole model, or the peft adapter file (adapter + head)."""
    if method == "full":
        return parameter_counts(model).total
    fold_prefix(model)
    with tempfile.TemporaryDirectory() as tmp:
        save_peft(model, tmp)
        return sum(t.numel() for t in safetensors.torch.load_file(str(Path(tmp) / WEIGHTS)).values())


def runs(m: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return m["runs"][method]


def seconds(m: dict[str, Any], method: str) -> float:
    """Mean seconds per training step over the seeds."""
    return sum(r["s_per_step"] for r in runs(m, method)) / len(runs(m, method))


def accs(m: dict[str, Any], method: str) -> list[float]:
    return [r["accuracy"] for r in runs(m, method)]


class Peft(Experiment):
    id = "peft"
    question_zh = "业界常用的PEFT方案：Prompt Tuning、Prefix Tuning、LoRA、QLoRA"
    question = "Parameter-efficient fine-tuning"
    claim = "far fewer trainable parameters at similar quality"
    rule = ("all-MiniLM-L6-v2 with a fresh 2-label head fine-tuned on one SST-2 sample with the same sentences, steps "
            "and seeds: every weight, LoRA (r = 8, W_Q and W_V), QLoRA, prefix tuning and prompt tuning (20 "
            "positions each), each at its own learning rate; accuracy on a fixed SST-2 dev sample. A method holds "
            "the claim if the parameters it saves (adapter and head) are under 1% of the model's and its accuracy is "
            "not below full fine-tuning's beyond the noise (the spread over seeds, and the sampling error of an "
            "accuracy over the dev sentences). Confirmed if all four methods hold it; "
            "partly if one to three do; refuted if none does; inconclusive if full fine-tuning itself stays within "
            "5 points of the majority label (nothing learned to compare to).")
    # A MiniLM step of 16 sentences at 32 tokens takes 0.3-0.6 s on this CPU (every weight the most; prefix
    # and prompt make the sequences 20 positions longer): quick affords 5 methods x 2 seeds x 30 steps.
    budgets = {"smoke": dict(n_train=64, n_dev=32, steps=2, seeds=1, max_len=32, batch_size=8, rates=QUICK_RATES),
               "quick": dict(n_train=1600, n_dev=200, steps=30, seeds=2, max_len=32, batch_size=16, rates=QUICK_RATES),
               "full": dict(n_train=6400, n_dev=872, steps=200, seeds=3, max_len=64, batch_size=32, rates=RATES)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        folder = minilm_folder()
        tok = load_bert_tokenizer(folder)
        bar = ctx.bar(len(ALL) * s["seeds"], self.id)
        out: dict[str, list[dict[str, Any]]] = {}
        for method in ALL:
            out[method] = []
            for i in range(s["seeds"]):
                seed = ctx.seed + i
                torch.manual_seed(seed)  # the head
                model = load_bert(folder, n_labels=2, pretraining_heads=False)
                lr = s["rates"][method]
                if method != "full":
                    apply_adapter(model, AdapterConfig(method=method, train="classifier", seed=seed))
                model = model.to(ctx.device)
                counts = parameter_counts(model)  # an NF4 weight counts its numbers
                memory = state_bytes(model)
                res = finetune_measured(model, tok, seed, s["n_train"], s["n_dev"], s["steps"], lr, s["max_len"],
                                        s["batch_size"], ctx.device)
                out[method].append(dict(accuracy=res.accuracy, s_per_step=res.train_s / s["steps"], lr=lr,
                                        trained=counts.trainable, total=counts.total, saved=saved_parameters(model, method),
                                        state_mib=memory / 2**20))
                bar.update(1)
        bar.close()
        return {"n_train": s["n_train"], "n_dev": s["n_dev"], "steps": s["steps"], "batch_size": s["batch_size"],
                "runs": out, "majority_share": majority_share(s["n_dev"])}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        full = mean_spread(accs(m, "full"))
        model_size = runs(m, "full")[0]["total"]
        holds, parts, numbers = [], [], {}
        for method in METHODS:
            r = runs(m, method)[0]
            fraction = r["saved"] / model_size
            worse = differs(accs(m, method), accs(m, "full"), m["n_dev"]) < 0
            if fraction < FEW and not worse:
                holds.append(method)
            acc = mean_spread(accs(m, method))
            parts.append(f"{method} {fmt(*acc)}, its saved file {100 * fraction:.2g}% of the model's parameters"
                         f"{' (below full beyond the noise)' if worse else ''}")
            numbers[f"{method}: accuracy - full"] = round(acc[0] - full[0], 4)
            numbers[f"{method}: saved parameters (% of the model)"] = round(100 * fraction, 3)
            numbers[f"{method}: training-state MiB (full: {runs(m, 'full')[0]['state_mib']:.0f})"] = round(
                r["state_mib"], 1)
            numbers[f"{method}: s/step (full: {seconds(m, 'full'):.3g})"] = round(seconds(m, method), 3)
        because = (f"SST-2 dev accuracy ({m['n_dev']} sentences, majority label {m['majority_share']:.3g}) after "
                   f"{m['steps']} steps of {m['batch_size']}: full fine-tuning {fmt(*full)}; " + "; ".join(parts))
        if full[0] - m["majority_share"] < NOTHING_LEARNED:
            return Verdict("inconclusive", because + "; full fine-tuning learned nothing to compare to", numbers)
        outcome = "confirmed" if len(holds) == len(METHODS) else "partly" if holds else "refuted"
        return Verdict(outcome, because, {**numbers, "methods that hold the claim": holds})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "peft.png"
        title = "Fine-tuning all-MiniLM-L6-v2 on SST-2: accuracy against parameters saved and training memory"
        with figure(path, title, ncols=2) as (ax1, ax2):
            for method, marker in zip(ALL, "osD^v"):
                acc = mean_spread([100 * a for a in accs(m, method)])
                r = runs(m, method)[0]
                ax1.errorbar([r["saved"]], [acc[0]], yerr=[acc[1]], fmt=marker, capsize=4, label=method)
                ax2.errorbar([r["state_mib"]], [acc[0]], yerr=[acc[1]], fmt=marker, capsize=4, label=method)
            for ax in (ax1, ax2):
                ax.axhline(100 * m["majority_share"], color="grey", lw=0.8, ls=":", label="majority label")
                ax.set_ylabel(f"dev accuracy (%, {m['n_dev']} sentences, mean over seeds)")
            ax1.set_xscale("log")
            ax1.set_xlabel("parameters saved (log scale: the adapter file and head, or the whole model)")
            ax2.set_xlabel("training-state memory (MiB: weights as stored + gradients + Adam moments)")
            ax1.legend(fontsize=8)
        return [path]
