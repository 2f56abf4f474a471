"""Quantized models side by side: quality, speed and size of our schemes against torch.ao's dynamic
INT8 and onnxruntime (fp32, and its dynamic INT8), all on the same fp32 model in one process.

Tasks:
- ``classify``: a BERT sentence classifier, accuracy on SST-2's GLUE dev set (``DATA/test.tsv``).
  Without ``--model``, all-MiniLM-L6-v2 is first fine-tuned on ``DATA/train.tsv`` (``--finetune-steps``).
- ``embed``: all-MiniLM-L6-v2 (or ``--model``) sentence embeddings; quality = the cosine of each
  sentence's embedding to the fp32 model's (mean and least over SST-2's GLUE dev sentences).
- ``translate``: one of our translation runs (``--model``), BLEU of ``--src`` against ``--ref``.

Speed: input tokens/s of the eval forward at ``--batch`` x ``--length`` random tokens and at one
sentence of ``--length`` (BERT); sentences/s of greedy translation of ``--batch`` sentences and of
one (translation). Calibration (static schemes, SmoothQuant): the first ``--calib-samples`` training
sentences. Size: bytes of the Linear layers' weights as stored, and of the whole model (every tensor;
ONNX: the .onnx files). Each row's
``speedup`` is against our fp32 model timed in the same rounds. ``--compile`` (BERT tasks): fp32 and
every variant once more under ``runtime.compile_for_inference`` (rows ``NAME+compile``). The headline
ratio (``ours`` / ``peer``) is the first variant's (compiled, with ``--compile``) against the fastest INT8 peer.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import replace
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from transformer_lab.bench.bert import _bert_folder
from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.bench.peft import data_folder
from transformer_lab.compression import linear_weight_bytes, model_bytes, quantize_model
from transformer_lab.compression.model import PRESETS
from transformer_lab.data.classification import read_labelled_tsv
from transformer_lab.data.batches import padding_and_mask
from transformer_lab.export import OnnxSeq2SeqStep, bert_inputs, export_model, onnx_session
from transformer_lab.models.bert import mean_pool
from transformer_lab.runtime import compile_for_inference
from transformer_lab.tasks import classify as classify_task
from transformer_lab.tasks.common import RunOptions
from transformer_lab.tasks.embed import by_length, encode_texts
from transformer_lab.tasks.export import quantize_onnx
from transformer_lab.tasks.quantize import Source, calibrator, load_source
from transformer_lab.tasks.translation import corpus_scores, translate
from transformer_lab.tokenizers.corpus import read_lines

VARIANTS = PRESETS
DEFAULT_VARIANTS = ("dynamic", "static-minmax", "static-kl", "static-smooth", "w4")
PEERS = ("torch.ao", "ort-fp32", "ort-int8")
TASKS = ("classify", "embed", "translate")


def _finetuned_minilm(data: Path, steps: int, tmp: str) -> str:
    folder, _ = _bert_folder(None, tmp)
    train = replace(classify_task.RECIPE, lr=1e-4, max_steps=steps, seed=0, progress=False)
    cfg = classify_task.ClassifyConfig(RunOptions(Path(tmp) / "run"), Path(folder), data / "train.tsv", data / "dev.tsv",
                                       train=train, steps=steps, eval_every=0, max_len=64, batch_size=32)
    classify_task.run(cfg)
    return str(Path(tmp) / "run" / "model")


def _ao_linear_bytes(model: nn.Module) -> int:
    """torch.ao's dynamic Linear layers: int8 weights and their scales (one per tensor)."""
    return sum(m.weight().numel() + 4 for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear))


def _torch_ao(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # torch.ao announces its own deprecation
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


class _Bert:
    """Quality and speed of BERT-like engines: a PyTorch module or an onnxruntime session."""

    def __init__(self, source: Source, task: str, texts: list[str], labels: list[int] | None, batch: int, length: int):
        self.task, self.labels, self.pad_id = task, labels, source.model.config.pad_id
        self.ids = encode_texts(source.tokenizer, texts, min(128, source.model.config.max_len))
        g = torch.Generator().manual_seed(0)
        vocab = source.model.config.vocab_size
        self.shapes = {"batch": torch.randint(1000 % vocab, vocab, (batch, length), generator=g),
                       "single": torch.randint(1000 % vocab, vocab, (1, length), generator=g)}
        self.reference: torch.Tensor | None = None

    def outputs(self, engine) -> torch.Tensor:
        """Predicted labels (classify) or mean-pooled embeddings (embed) over the evaluation texts."""
        if isinstance(engine, nn.Module):
            head = (lambda m, t, mask: m(t, attention_mask=mask).class_logits.argmax(-1)) if self.task == "classify" else \
                (lambda m, t, mask: mean_pool(m(t, attention_mask=mask).hidden, mask))
            return by_length(engine, self.ids, 64, head)
        rows = []
        for i in range(0, len(self.ids), 64):  # onnxruntime: batches in order, padded
            ids, mask = padding_and_mask(self.ids[i:i + 64], self.pad_id)
            out = engine.run(None, bert_inputs(ids, mask))
            rows.append(torch.from_numpy(out[2]).argmax(-1) if self.task == "classify"
                        else mean_pool(torch.from_numpy(out[0]), mask))
        return torch.cat(rows)

    def quality(self, engine) -> dict[str, float]:
        out = self.outputs(engine)
        if self.task == "classify":
            return {"accuracy": round(float((out == torch.tensor(self.labels)).float().mean()), 4)}
        if self.reference is None:
            self.reference = out
        cos = F.cosine_similarity(out, self.reference)
        return {"mean_cosine_to_fp32": round(float(cos.mean()), 4), "min_cosine_to_fp32": round(float(cos.min()), 4)}

    def runner(self, engine, shape: str) -> Callable[[], None]:
        tokens = self.shapes[shape]
        if isinstance(engine, nn.Module):
            def run():
                with torch.no_grad():
                    engine(tokens)
            return run
        feed = bert_inputs(tokens)
        return lambda: engine.run(None, feed)

    def work(self, shape: str) -> int:
        return self.shapes[shape].numel()


class _Translation:
    def __init__(self, source: Source, src: list[str], ref: list[str], batch: int, beam: int):
        self.source, self.src, self.ref, self.beam = source, src, ref, beam
        self.sentences = {"batch": src[:batch], "single": src[:1]}

    def _translate(self, engine, texts: list[str], beam: int) -> list[str]:
        s = self.source
        if isinstance(engine, nn.Module):
            return translate(engine, s.tokenizer, s.target_tokenizer, texts, beam=beam, batch_size=64)
        enc, dec = engine
        return translate(s.model, s.tokenizer, s.target_tokenizer, texts, beam=beam, batch_size=64,
                         make_step=lambda src: OnnxSeq2SeqStep(enc, dec, src, s.model.config.pad_id))

    def quality(self, engine) -> dict[str, float]:
        return {"bleu": corpus_scores(self._translate(engine, self.src, self.beam), self.ref)["bleu"]}

    def runner(self, engine, shape: str) -> Callable[[], None]:
        texts = self.sentences[shape]
        return lambda: self._translate(engine, texts, 1)

    def work(self, shape: str) -> int:
        return len(self.sentences[shape])


def bench_quantize(task: str = "classify", model: str | None = None, data: str | None = None,
                   variants: tuple[str, ...] = DEFAULT_VARIANTS, peers: tuple[str, ...] = PEERS, batch: int = 8,
                   length: int = 128, steps: int = 3, rounds: int = 5, calib_samples: int = 256, limit: int | None = None,
                   finetune_steps: int = 300, src: str | None = None, ref: str | None = None,
                   calib_data: str | None = None, beam: int = 4, compile: bool = False,
                   on_step: Callable[[str], None] | None = None) -> BenchResult:
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if compile and task == "translate":
        raise ValueError("compile: for the BERT tasks; a translation model decodes step by step, and a compiled decoder "
                         "step measured slower than eager (runtime.compile_for_inference)")
    unknown = [v for v in variants if v not in VARIANTS] + [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"variants/peers: unknown {unknown}; variants are {sorted(VARIANTS)}, peers {list(PEERS)}")
    note = on_step or (lambda _: None)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as scope:
        if task == "translate":
            if not (model and src and ref and calib_data):
                raise ValueError("translate: give --model (a translation run), --src and --ref (the test set) and "
                                 "--calib-data (source-language training text)")
            source = load_source(model)
            subject = _Translation(source, [s for s in read_lines(src)][:limit], [r for r in read_lines(ref)][:limit],
                                   batch, beam)
            calib = [line for line in read_lines(calib_data) if line.strip()][:calib_samples]
            name = model
        else:
            folder = data_folder(data)
            if task == "classify" and model is None:
                note(f"fine-tuning all-MiniLM-L6-v2 on SST-2 ({finetune_steps} steps)")
                model = _finetuned_minilm(folder, finetune_steps, tmp)
            source = load_source(model or _bert_folder(None, tmp)[0])
            if task == "classify" and source.model.classifier is None:
                raise ValueError(f"{model}: no classification head; --task classify needs a fine-tuned classifier")
            texts, labels = read_labelled_tsv(folder / "test.tsv")
            subject = _Bert(source, task, texts[:limit], labels[:limit], batch, length)
            calib = read_labelled_tsv(folder / "train.tsv")[0][:calib_samples]
            name = model or "all-MiniLM-L6-v2"
        fp32 = source.model.eval()
        engines: dict[str, Any] = {"fp32": fp32}
        sizes = {"fp32": (linear_weight_bytes(fp32), model_bytes(fp32))}  # (Linear weights, whole model)
        for v in variants:
            note(f"quantizing: {v}")
            probe = Source(copy.deepcopy(fp32), source.folder, [], source.tokenizer, source.target_tokenizer)
            engines[v] = quantize_model(probe.model, VARIANTS[v], calibrate=calibrator(probe, calib, 16)).eval()
            sizes[v] = (linear_weight_bytes(engines[v]), model_bytes(engines[v]))
        if compile:  # fp32 and every variant once more, compiled (they compile on their first call, for quality)
            # Every engine runs Bert.forward's code: each needs its own graphs (two: batch 1 is specialised
            # apart), more than Dynamo's default limit of 8 per code object, past which it runs eager.
            scope.enter_context(torch._dynamo.config.patch(recompile_limit=8 * len(engines)))
            for k in list(engines):
                engines[f"{k}+compile"], sizes[f"{k}+compile"] = compile_for_inference(engines[k]), sizes[k]
        if "torch.ao" in peers:
            engines["torch.ao"] = _torch_ao(fp32)
            ao = _ao_linear_bytes(engines["torch.ao"])
            sizes["torch.ao"] = (ao, sizes["fp32"][1] - sizes["fp32"][0] + ao)
        if {"ort-fp32", "ort-int8"} & set(peers):
            note("exporting to ONNX")
            files = export_model(fp32, Path(tmp) / "onnx")
            threads = torch.get_num_threads()
            for peer, paths in (("ort-fp32", files), ("ort-int8", [quantize_onnx(f) for f in files] if "ort-int8" in peers else [])):
                if peer in peers:
                    sessions = [onnx_session(p, threads) for p in paths]
                    engines[peer] = sessions[0] if len(sessions) == 1 else tuple(sessions)
                    sizes[peer] = (None, sum(p.stat().st_size for p in paths))  # the .onnx files
        rows: dict[str, dict[str, Any]] = {}
        for k, engine in engines.items():
            note(f"quality: {k}")
            linear, whole = sizes[k]
            rows[k] = {**subject.quality(engine), "linear_weight_bytes": linear, "model_bytes": whole}
        for shape in ("batch", "single"):
            note(f"timing: {shape}")
            seconds = time_rounds({k: subject.runner(e, shape) for k, e in engines.items()}, steps, rounds)
            for k in engines:
                rows[k][f"{shape}_per_s"] = round(subject.work(shape) / seconds[k], 1)
                rows[k][f"{shape}_speedup"] = round(seconds["fp32"] / seconds[k], 3)
    best_peer = max((p for p in peers if p in rows and p != "ort-fp32"), key=lambda p: rows[p]["batch_per_s"], default=None)
    first = variants[0] if variants else "fp32"  # the headline: the first variant asked for (compiled, with --compile)
    ours_key = f"{first}+compile" if f"{first}+compile" in rows else first
    unit = "input tokens/s" if task != "translate" else "sentences/s (greedy)"
    result = {"benchmark": "quantize", "task": task, "model": name, "batch": batch, "length": length if task != "translate" else None,
              "unit": unit, "ours_variant": ours_key, "peer_name": best_peer, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    table_rows = []
    if best_peer is not None:
        for shape in ("batch", "single"):
            row = speed_row(1.0, {"ours": 1.0 / rows[ours_key][f"{shape}_per_s"], "peer": 1.0 / rows[best_peer][f"{shape}_per_s"]})
            table_rows.append((f"{shape}: {ours_key} vs {best_peer}", {**row, "ours": rows[ours_key][f"{shape}_per_s"],
                                                                      "peer": rows[best_peer][f"{shape}_per_s"]}))
        result.update(ours=rows[ours_key]["batch_per_s"], peer=rows[best_peer]["batch_per_s"], ratio=table_rows[0][1]["ratio"])
    return BenchResult(result, table_rows, header=f"bench quantize: {task}, {name}, {unit}", notes=[format_rows(rows)])


def format_rows(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table of every engine: quality, speed-ups against fp32, weight size."""
    quality = [k for k in next(iter(rows.values())) if not k.endswith("bytes") and not k.startswith(("batch", "single"))]
    head = ["engine", *quality, "batch /s (x fp32)", "batch 1 /s (x fp32)", "Linear weights MiB", "model MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, r in rows.items():
        mib = [f"{r[k] / 2**20:.1f}" if r[k] else "-" for k in ("linear_weight_bytes", "model_bytes")]
        lines.append("| " + " | ".join([k, *(str(r[q]) for q in quality),
                                        f"{r['batch_per_s']:,.0f} ({r['batch_speedup']:.2f}x)",
                                        f"{r['single_per_s']:,.1f} ({r['single_speedup']:.2f}x)", *mib]) + " |")
    return "\n".join(lines)
