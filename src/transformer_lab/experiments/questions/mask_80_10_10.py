"""`mask-80-10-10`: why replace the selected tokens 80% [MASK], 10% random, 10% unchanged?

BERT (§3.1, Appendix C.2): [MASK] never appears in fine-tuning, so a model that only ever predicts
at [MASK] positions meets inputs at fine-tuning unlike those it was trained on; the random and the
unchanged 10% make it predict, and so represent, every token. Measured on the small BERT and
tiny-shakespeare at the same budget, with the same selection of tokens (only their replacement
differs: ``_bert_small.Corrupted`` turns all of them into [MASK]):

- MLM accuracy at held-out selected tokens replaced by [MASK] (the skill both train for);
- the mismatch: accuracy at the same positions with the token left in place (what fine-tuning
  feeds the model);
- SST-2 dev accuracy after the same fine-tuning from each.

One canon text says [MASK] "即[CLS]" (is [CLS]): the ids are read off the vocabularies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.data import minilm_folder
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._bert_small import (
    corpus,
    finetune_pretrained,
    held_accuracy,
    majority_share,
    pretrain,
    pretrained_model,
    held_tokens,
    unigram_accuracy,
)
from transformer_lab.experiments.stats import differs, fmt, learned, mean_spread, outcome_of
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

VARIANTS = ("80/10/10", "mask only")
MEASURES = {"masked_acc": "held-out MLM accuracy at [MASK] (%)",
            "unmasked_acc": "held-out accuracy, token left in place (%)",
            "finetune_acc": "SST-2 dev accuracy after fine-tuning (%)"}


def values(m: dict[str, Any], variant: str, key: str) -> list[float]:
    return [r[key] for r in m["runs"][variant]]


class Mask801010(Experiment):
    id = "mask-80-10-10"
    question_zh = "（MLM的80%/10%/10%替换策略）"
    question = "Why 80/10/10 masking?"
    claim = "reduces the pre-train / fine-tune mismatch (one canon text calls [MASK] \"即[CLS]\")"
    rule = ("The small BERT pre-trained by MLM on tiny-shakespeare with 80/10/10 replacement and with [MASK] only "
            "(the same selected tokens, steps and seeds), then the same SST-2 fine-tuning. Mismatch part: at held-out "
            "selected positions with the token left in place (what fine-tuning sees), the 80/10/10 model predicts "
            "the token more accurately, beyond the noise (the spread over seeds, and the sampling error of an "
            "accuracy over that many held-out tokens). Fine-tuning part: the SST-2 dev accuracy is higher from the "
            "80/10/10 model, beyond the noise (spread; sampling error over the dev sentences). Confirmed if both "
            "parts hold; partly if one holds; refuted if neither holds and one goes the other way beyond the noise; "
            "inconclusive if neither leaves the noise (experiments.stats.outcome_of). A side that is no better than "
            "always answering the commonest token (at [MASK]) or the majority label (fine-tuning), beyond the "
            "noise, learned nothing and is not compared. The aside \"[MASK] 即 [CLS]\" is checked "
            "on the vocabularies' ids and reported; it does not move the outcome.")
    budgets = {"smoke": dict(steps=6, seeds=1, ft_train=64, ft_dev=64, ft_steps=4, held_batches=2),
               "quick": dict(steps=300, seeds=2, ft_train=2000, ft_dev=500, ft_steps=150, held_batches=10),
               "full": dict(steps=2000, seeds=3, ft_train=8000, ft_dev=2000, ft_steps=600, held_batches=21)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        # the ids in our (trimmed) vocabulary and in the whole one all-MiniLM-L6-v2 ships (BERT's uncased)
        vocabularies = {"ours": corpus().tokenizer,
                        "all-MiniLM-L6-v2": WordPieceTokenizer.from_vocab_file(minilm_folder() / "vocab.txt")}
        ids = {where: {name: tok.token_to_id(name) for name in ("[CLS]", "[SEP]", "[MASK]", "[PAD]")}
               for where, tok in vocabularies.items()}
        device, held = str(ctx.device), s["held_batches"]
        bar = ctx.bar(len(VARIANTS) * s["seeds"], self.id)
        runs: dict[str, list[dict]] = {}
        for name in VARIANTS:
            rows = []
            for seed in range(ctx.seed, ctx.seed + s["seeds"]):
                pre = pretrain(seed, s["steps"], corruption=name, device=device, held_batches=held)
                model = pretrained_model(pre, device).eval()
                rows.append(dict(seed=seed, masked_acc=held_accuracy(model, "mask", batches=held)["mlm_acc"],
                                 unmasked_acc=held_accuracy(model, "original", batches=held)["mlm_acc"],
                                 finetune_acc=finetune_pretrained(pre, seed, s["ft_train"], s["ft_dev"], s["ft_steps"],
                                                                  device)))
                bar.update(1)
            runs[name] = rows
        bar.close()
        return {"steps": s["steps"], "token_ids": ids, "runs": runs, "unigram_acc": unigram_accuracy(held),
                "held_tokens": held_tokens(held),
                "finetune": {"sentences": s["ft_train"], "dev_sentences": s["ft_dev"], "steps": s["ft_steps"],
                             "majority_share": majority_share(s["ft_dev"])}}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        un_a, un_b = values(m, "80/10/10", "unmasked_acc"), values(m, "mask only", "unmasked_acc")
        ft_a, ft_b = values(m, "80/10/10", "finetune_acc"), values(m, "mask only", "finetune_acc")
        mk_a, mk_b = values(m, "80/10/10", "masked_acc"), values(m, "mask only", "masked_acc")
        n_tok, n_dev = m["held_tokens"], m["finetune"]["dev_sentences"]
        d_un, d_ft = differs(un_a, un_b, n_tok), differs(ft_a, ft_b, n_dev)
        ids = m["token_ids"]
        same = any(v["[MASK]"] == v["[CLS]"] for v in ids.values())
        id_text = ", ".join(f"{v['[MASK]']} and {v['[CLS]']} in {where}" for where, v in ids.items())
        because = (f"with the token left in place the 80/10/10 model predicts it {fmt(*mean_spread(un_a))} of the "
                   f"time, the mask-only model {fmt(*mean_spread(un_b))}; at [MASK] {fmt(*mean_spread(mk_a))} against "
                   f"{fmt(*mean_spread(mk_b))} (always the commonest token: {m['unigram_acc']:.3g}); SST-2 dev "
                   f"accuracy after the same fine-tuning {fmt(*mean_spread(ft_a))} against {fmt(*mean_spread(ft_b))} "
                   f"(majority label {m['finetune']['majority_share']:.3g}); [MASK] and [CLS] are ids {id_text}: "
                   + ("the same token" if same else "different tokens, so '[MASK] 即 [CLS]' is wrong"))
        outcome = outcome_of([d_un, d_ft])
        idle = [name for name, mk in (("80/10/10", mk_a), ("mask-only", mk_b)) if not learned(mk, m["unigram_acc"], n_tok)]
        if idle:  # a model that predicts the commonest token at [MASK]: no model to compare
            outcome = "inconclusive"
            because += (f"; but the {' and the '.join(idle)} model{'s' if len(idle) > 1 else ''} learned nothing in "
                        f"{m['steps']} steps (at [MASK] {'they predict' if len(idle) > 1 else 'it predicts'} the "
                        "commonest token), so neither comparison measures the mismatch")
        elif not (learned(ft_a, m["finetune"]["majority_share"], n_dev) and learned(ft_b, m["finetune"]["majority_share"], n_dev)):
            d_ft = 0  # a fine-tuned model at the majority label: no fine-tuning comparison
            outcome = outcome_of([d_un])
            because += "; a fine-tuned model stayed at the majority label, so fine-tuning is not compared"
        return Verdict(outcome, because, {
            "mismatch reduced (beyond the noise)": d_un > 0, "fine-tuning helped (beyond the noise)": d_ft > 0,
            "token-in-place accuracy 80/10/10 / mask only": f"{mean_spread(un_a)[0]:.3f} / {mean_spread(un_b)[0]:.3f}",
            "SST-2 dev accuracy 80/10/10 / mask only": f"{mean_spread(ft_a)[0]:.3f} / {mean_spread(ft_b)[0]:.3f}",
            "[MASK] is [CLS]": same})

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "mask_80_10_10.png"
        with figure(path, "80/10/10 vs [MASK]-only replacement (small BERT, tiny-shakespeare; then SST-2 fine-tuning)",
                    ncols=3, width=4.3) as axes:
            for ax, (key, label) in zip(axes, MEASURES.items()):
                stats = [mean_spread([100 * v for v in values(m, n, key)]) for n in VARIANTS]
                ax.bar_label(ax.bar(VARIANTS, [x[0] for x in stats], yerr=[x[1] for x in stats], capsize=4), fmt="%.1f", padding=6)
                ax.set_ylabel(label)
                ax.set_title("mean over seeds, whiskers: spread", fontsize=9)
            for ax in axes[:2]:
                ax.axhline(100 * m["unigram_acc"], color="grey", ls=":", lw=1, label="always the commonest token")
                ax.legend(fontsize=8, loc="upper right")
            axes[2].axhline(100 * m["finetune"]["majority_share"], color="grey", ls=":", lw=1, label="majority label")
            axes[2].set_ylim(bottom=40)
            axes[2].legend(fontsize=8, loc="lower right")
        return [path]
