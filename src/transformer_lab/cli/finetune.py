"""Fine-tuning commands: `finetune classify` (a BERT folder on labelled sentences), `finetune lm` (a GPT
on a text file), `finetune translate` (one of our translation runs on new parallel text), each with every weight trained or with a parameter-efficient adapter (`--peft lora |
qlora | prefix | prompt`), and `peft merge` (a LoRA adapter folded into its base model).

Adapters are written as `peft` writes them (OUT/adapter: adapter_config.json +
adapter_model.safetensors), so `peft.PeftModel.from_pretrained` loads them onto the `transformers`
model of the same base (BERT, GPT-2; an encoder-decoder's adapter keeps this project's module names).
Each run prints its trainable and total parameters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformer_lab.cli.args import (adapter_config, add_json_summary, add_peft_args, add_run_args,
                                      add_split_special_tokens, add_train_args, finish, kept, positive_float, positive_int,
                                      refuse_unused, resumed, run_options, train_config)
from transformer_lab.cli.train import add_translation_data_args, take_named_set, translation_data
from transformer_lab.compression import OBSERVERS, QuantConfig
from transformer_lab.compression.linear import SCHEMES
from transformer_lab.data.text import locate
from transformer_lab.tasks import adapt, classify, lm, translation


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("finetune", help="fine-tune a pretrained model on a task (all weights, or --peft)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = f.add_subparsers(dest="kind", metavar="KIND", required=True)
    fc = fsub.add_parser("classify", help="sequence classification (e.g. SST-2) with a BERT folder",
                         description="TSV files with a header naming 'sentence' and 'label' columns (GLUE format). "
                                     "A fresh classification head on [CLS]'s pooled vector; every weight trains, or "
                                     "with --peft only an adapter and the head. Reports dev (and --test) accuracy; "
                                     "writes OUT/model (a HF BERT folder), or OUT/adapter (a peft adapter folder).")
    fc.add_argument("--model", required=True, help="a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt)")
    fc.add_argument("--train", required=True, metavar="TSV",
                    help="training sentences: a TSV with a header naming 'sentence' and 'label' (integer) columns")
    fc.add_argument("--dev", required=True, metavar="TSV",
                    help="validation sentences (same format); the best checkpoint is the most accurate on them")
    fc.add_argument("--test", default=None, metavar="TSV", help="scored once at the end with the best dev checkpoint")
    fc.add_argument("--epochs", type=positive_float, default=None, help="default 1 (unless --max-steps)")
    fc.add_argument("--max-len", type=positive_int, default=None,
                    help="tokens per sentence, [CLS]/[SEP] included; longer ones are cut (default 128)")
    fc.add_argument("--batch-size", type=positive_int, default=None, help="default 32")
    fc.add_argument("--qat", default=None, choices=SCHEMES,
                    help="quantization-aware training for this quantization scheme (straight-through estimator); "
                         "also writes OUT/quantized")
    fc.add_argument("--qat-bits", type=int, default=None, choices=(8, 4), help="weight bits with --qat (default 8)")
    fc.add_argument("--qat-calibrate", default=None, choices=sorted(OBSERVERS),
                    help="the static scheme's activation range when the QAT model is quantized")
    add_split_special_tokens(fc)
    _run_train_peft_args(fc, classify_cmd)

    fl = fsub.add_parser("lm", help="continue training a GPT (HF GPT-2 folder or our run) on a text file",
                         description="The text is tokenised by the model's own tokenizer and split 90/10; the "
                                     "validation loss is reported before and after. With --peft, writes OUT/adapter "
                                     "(a peft adapter for the GPT-2 model).")
    fl.add_argument("--model", required=True, help="a Hugging Face GPT-2 folder, or one of our GPT runs / checkpoints")
    fl.add_argument("--data", required=True, help="a UTF-8 text file")
    fl.add_argument("--context", type=positive_int, default=None, help="training window (default: min(model's, 256))")
    fl.add_argument("--batch-size", type=positive_int, default=None, help="default 8")
    _run_train_peft_args(fl, lm_cmd)

    ft = fsub.add_parser("translate", help="continue training one of our translation runs on new parallel text",
                         description="The text is encoded with the model's own tokenizers (a byte-level vocabulary "
                                     "covers a new domain or a related source language). Validation loss and BLEU "
                                     "are reported before and after. With --peft, writes OUT/adapter.")
    ft.add_argument("--model", required=True, help="one of our translation runs or checkpoint folders")
    add_translation_data_args(ft, "a named data set, multi30k (with --src and --tgt)")
    _run_train_peft_args(ft, translate_cmd)

    p = sub.add_parser("peft", help="adapters: merge a LoRA adapter into its base model")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    pm = psub.add_parser("merge", help="fold a LoRA / QLoRA adapter into its base and write a plain model",
                         description="--model: a Hugging Face BERT or GPT-2 folder (written back as one, with its "
                                     "tokenizer files) or one of our runs / checkpoints; --adapter: a peft adapter "
                                     "folder (ours or peft's). The merged model has no adapter and the same outputs.")
    pm.add_argument("--model", required=True, help="the base model the adapter was trained on")
    pm.add_argument("--adapter", required=True, help="a peft adapter folder (adapter_config.json + adapter_model.safetensors)")
    pm.add_argument("--out", required=True, help="a new folder for the merged model")
    pm.set_defaults(func=merge_cmd)


def _run_train_peft_args(p: argparse.ArgumentParser, func) -> None:
    """What every fine-tuning command takes besides its data: the run, the optimisation, the adapter."""
    add_run_args(p, out_required=True)
    add_json_summary(p)
    add_train_args(p)
    add_peft_args(p)
    p.set_defaults(func=func)


def classify_cmd(args: argparse.Namespace) -> int:
    adapter = adapter_config(args)
    settings = kept(args, "bert", epochs=args.epochs, max_len=args.max_len, batch_size=args.batch_size)
    if args.qat != "static":  # (they were ignored)
        refuse_unused("a fine-tuning without --qat static" if args.qat is None else f"--qat {args.qat} (it calibrates "
                      "no activation range)", qat_calibrate=args.qat_calibrate)
    if args.qat is None:
        refuse_unused("a fine-tuning without --qat", qat_bits=args.qat_bits)
    qat = {k: v for k, v in (("bits", args.qat_bits), ("calibrate", args.qat_calibrate)) if v is not None}
    cfg = classify.ClassifyConfig(
        run_options(args), Path(args.model), locate(args.train), locate(args.dev), locate(args.test) if args.test else None,
        train_config(args, classify.recipe(adapter), "bert"), steps=args.max_steps, warmup=args.warmup,
        eval_every=args.eval_every, **settings,
        split_special_tokens=args.split_special_tokens, adapter=adapter, prompt_text=args.prompt_text,
        qat=QuantConfig(scheme=args.qat, **qat) if args.qat else None)
    return finish(classify.run(cfg), args.json)


def lm_cmd(args: argparse.Namespace) -> int:
    adapter = adapter_config(args)
    cfg = lm.LMFinetuneConfig(run_options(args), Path(args.model), locate(args.data),
                              train_config(args, lm.finetune_recipe(adapter), "gpt"), adapter=adapter,
                              prompt_text=args.prompt_text, **kept(args, "gpt", context=args.context,
                                                                   batch_size=args.batch_size))
    return finish(lm.finetune(cfg), args.json)


def translate_cmd(args: argparse.Namespace) -> int:
    adapter = adapter_config(args)
    data = ("data", "src", "tgt", "train_src", "train_tgt", "valid_src", "valid_tgt")
    if args.resume and not any(getattr(args, n) for n in data):  # a run on a named set resumes with --resume alone
        take_named_set(args, resumed(args)[2])
    cfg = translation.TranslationFinetuneConfig(
        run_options(args), Path(args.model), train_config(args, translation.finetune_recipe(adapter), "transformer"),
        **translation_data(args), **kept(args, "transformer", max_len=args.max_len, max_tokens=args.max_tokens,
                                         bleu_sample=args.bleu_sample),
        cache_dir=Path(args.cache_dir) if args.cache_dir else None, adapter=adapter, prompt_text=args.prompt_text)
    return finish(translation.finetune(cfg), args.json)


def merge_cmd(args: argparse.Namespace) -> int:
    print(json.dumps(adapt.merge_adapter(args.model, args.adapter, args.out)))
    return 0
