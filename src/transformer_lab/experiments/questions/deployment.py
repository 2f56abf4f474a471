"""`deployment`: which optimisations pay when a Transformer is deployed on given hardware?

The canon lists quantization, pruning, distillation, batching and hardware-specific kernels. All five
are measured here on all-MiniLM-L6-v2 sentence embeddings (SST-2 sentences, as a service would receive
them) on this machine's CPU:

- quantization: our dynamic INT8 (``compression``), onnxruntime's dynamic INT8;
- pruning: half the weights of every encoder Linear zeroed by magnitude (unstructured,
  ``torch.nn.utils.prune``: the dense shapes stay), and half of every FFN's neurons removed
  (structured, ``compression.prune_ffn``), then trained to reproduce the original's embeddings;
- distillation: a student of every other layer (3 of 6, as DistilBERT starts its student;
  ``compression.keep_layers``) trained to reproduce the teacher's embeddings (1 - cosine) on SST-2
  training sentences;
- specialised kernels and runtimes: onnxruntime (graph optimisations, its own kernels) and
  torch.compile (inductor's fused C++ kernels) on the fp32 model;
- batching: the server's request batching (``serving.app.Worker``) with concurrent clients sending one
  sentence each, against the same worker taking them one at a time.

Per engine: latency of one sentence (median over sentences, batch 1), throughput of a stream of
sentences sent in batches of 32 (sorted by length, as the embed task batches), and fidelity: the mean
cosine of its embeddings to fp32 eager's on the same (dev) sentences.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from transformer_lab.compression import QuantConfig, keep_layers, prune_ffn, quantize_model
from transformer_lab.experiments.base import Context, Experiment, Verdict
from transformer_lab.experiments.data import minilm_folder
from transformer_lab.experiments.plots import figure
from transformer_lab.experiments.questions._bert_small import sst2_subset
from transformer_lab.data.batches import padding_and_mask
from transformer_lab.export import bert_inputs, export_bert, onnx_session
from transformer_lab.models.bert import mean_pool
from transformer_lab.models.hf import load_bert
from transformer_lab.serving.app import Worker
from transformer_lab.tasks.embed import encode_texts
from transformer_lab.tasks.export import quantize_onnx
from transformer_lab.tokenizers.io import load_bert_tokenizer

PAYS = 1.2  # a strategy pays if it makes latency or throughput at least 1.2x fp32 eager's
KEEPS = 0.95  # ... with embeddings of mean cosine at least 0.95 to fp32 eager's
UNSTRUCTURED, PRUNED, STUDENT = "50% of weights zeroed", "50% of FFN neurons, distilled", "3 of 6 layers, distilled"
STRATEGIES = {"quantization": ("ours int8", "onnxruntime int8"), "pruning": (UNSTRUCTURED, PRUNED),
              "distillation": (STUDENT,), "kernels and runtimes": ("onnxruntime fp32", "compiled fp32"),
              "batching": ("batched serving",)}


def _torch_engine(model: nn.Module) -> Callable[[list[list[int]]], torch.Tensor]:
    def run(rows):
        ids, mask = padding_and_mask(rows, model.config.pad_id)
        with torch.no_grad():
            return mean_pool(model(ids, attention_mask=mask).hidden, mask)
    return run


def _ort_engine(session, pad_id: int) -> Callable[[list[list[int]]], torch.Tensor]:
    def run(rows):
        ids, mask = padding_and_mask(rows, pad_id)
        return mean_pool(torch.from_numpy(session.run(None, bert_inputs(ids, mask))[0]), mask)
    return run


def measure(run: Callable[[list[list[int]]], Any], ids: list[list[int]], singles: int, batch: int) -> dict[str, float]:
    """Median latency of one sentence (ms, the first ``singles`` sentences) and sentences/s over all of
    ``ids`` in batches of ``batch`` sorted by length (one untimed warm-up call of each shape first)."""
    run(ids[:1])
    run(ids[:batch])
    lat = []
    for row in ids[:singles]:
        t0 = time.perf_counter()
        run([row])
        lat.append(1000 * (time.perf_counter() - t0))
    order = sorted(ids, key=len)
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        run(order[i:i + batch])
    return {"latency_ms": statistics.median(lat), "throughput": len(ids) / (time.perf_counter() - t0)}


def embeddings(run: Callable[[list[list[int]]], torch.Tensor], ids: list[list[int]], batch: int) -> torch.Tensor:
    return torch.cat([torch.as_tensor(run(ids[i:i + batch])) for i in range(0, len(ids), batch)])


def unstructured(model: nn.Module, amount: float) -> nn.Module:
    """The fraction ``amount`` of every encoder Linear's weights, smallest first, set to zero (in place)."""
    for module in model.encoder.modules():
        if isinstance(module, nn.Linear):
            prune.l1_unstructured(module, "weight", amount)
            prune.remove(module, "weight")
    return model


def distill(student: nn.Module, teacher: torch.Tensor, ids: list[list[int]], steps: int, batch: int, lr: float,
            seed: int, on_step: Callable[[], Any] = lambda: None) -> list[float]:
    """Train ``student``'s mean-pooled embeddings of ``ids`` toward the ``teacher``'s (rows in the same
    order) by 1 - cosine, AdamW at ``lr``, ``steps`` shuffled batches; returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    losses = []
    for _ in range(steps):
        pick = torch.randperm(len(ids), generator=g)[:batch].tolist()
        tokens, mask = padding_and_mask([ids[i] for i in pick], student.config.pad_id)
        emb = mean_pool(student(tokens, attention_mask=mask).hidden, mask)
        loss = (1 - F.cosine_similarity(emb, teacher[pick], dim=-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        on_step()
    return losses


def serving(run: Callable[[list[list[int]]], Any], ids: list[list[int]], clients: int, max_batch: int) -> float:
    """Sentences/s when ``clients`` threads each send one sentence at a time through the server's worker."""
    worker = Worker(lambda rows, _key: list(run(rows)), max_batch, max_wait_ms=2.0)
    worker.submit(ids[:1]).result()  # warm-up

    def client(k: int) -> None:
        for row in ids[k::clients]:
            worker.submit([row]).result()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return len(ids) / (time.perf_counter() - t0)


class Deployment(Experiment):
    id = "deployment"
    question_zh = "设想你需要在不同的硬件配置上部署Transformer模型，你会考虑哪些因素以及可能采用的优化策略？"
    question = "Deploying on different hardware"
    claim = "quantization, pruning, distillation, batching, hardware-specific kernels"
    rule = ("all-MiniLM-L6-v2 embedding SST-2 sentences on this CPU: one-sentence latency and batched throughput of "
            "fp32 eager, our INT8, onnxruntime fp32 and INT8, torch.compile (full budget), half of every encoder "
            "Linear's weights zeroed (unstructured), half of every FFN's neurons removed and the model distilled, a "
            "student of every other layer distilled (both trained to reproduce fp32's embeddings on SST-2 training "
            "sentences), and the server's request batching with concurrent one-sentence clients against one at a "
            "time. An engine pays if it reaches 1.2x fp32 eager's latency or throughput while its embeddings of the "
            "dev sentences keep a mean cosine of at least 0.95 to fp32 eager's. A strategy (quantization, pruning, "
            "distillation, kernels and runtimes, batching) pays if one of its engines does. Confirmed if all five "
            "pay, partly if one to four, refuted if none.")
    budgets = {"smoke": dict(n=16, singles=4, batch=8, clients=4, compile=False, distill_steps=2, distill_sentences=32,
                             distill_lr=1e-4),
               "quick": dict(n=256, singles=32, batch=32, clients=8, compile=False, distill_steps=60, distill_sentences=1920,
                             distill_lr=1e-4),
               "full": dict(n=872, singles=64, batch=32, clients=16, compile=True, distill_steps=300, distill_sentences=8000,
                            distill_lr=1e-4)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        folder = minilm_folder()
        tok = load_bert_tokenizer(folder)
        fp32 = load_bert(folder, pretraining_heads=False, n_labels=0).eval()
        train_texts, _, dev_texts, _ = sst2_subset(s["distill_sentences"], s["n"])
        ids, train_ids = encode_texts(tok, dev_texts, 128), encode_texts(tok, train_texts, 128)
        reference = embeddings(_torch_engine(fp32), ids, s["batch"])
        teacher = embeddings(_torch_engine(fp32), train_ids, s["batch"])
        students = {PRUNED: prune_ffn(copy.deepcopy(fp32), 0.5), STUDENT: keep_layers(copy.deepcopy(fp32), [0, 2, 4])}
        # the bar: each distillation step; each engine measured (fp32, two INT8, the zeroed model, the
        # students, onnxruntime fp32, the compiled model); the two serving runs
        n_engines = 4 + len(students) + int(s["compile"])
        bar = ctx.bar(len(students) * s["distill_steps"] + n_engines + 2, self.id)
        before, curves = {}, {}
        for name, student in students.items():
            before[name] = float(F.cosine_similarity(embeddings(_torch_engine(student.eval()), ids, s["batch"]),
                                                     reference, dim=-1).mean())
            curves[name] = distill(student, teacher, train_ids, s["distill_steps"], s["batch"], s["distill_lr"], ctx.seed,
                                   lambda: bar.update(1))
            student.eval()
        engines: dict[str, Callable] = {"fp32 eager": _torch_engine(fp32),
                                        "ours int8": _torch_engine(quantize_model(copy.deepcopy(fp32), QuantConfig())),
                                        UNSTRUCTURED: _torch_engine(unstructured(copy.deepcopy(fp32), 0.5)),
                                        **{name: _torch_engine(student) for name, student in students.items()}}
        with tempfile.TemporaryDirectory() as tmp:
            path = export_bert(fp32, Path(tmp) / "model.onnx")
            threads = torch.get_num_threads()
            engines["onnxruntime fp32"] = _ort_engine(onnx_session(path, threads), fp32.config.pad_id)
            engines["onnxruntime int8"] = _ort_engine(onnx_session(quantize_onnx(path), threads), fp32.config.pad_id)
            if s["compile"]:
                engines["compiled fp32"] = _torch_engine(torch.compile(copy.deepcopy(fp32), dynamic=True))
            rows = {}
            for name, run in engines.items():
                rows[name] = measure(run, ids, s["singles"], s["batch"])
                rows[name]["cosine"] = float(F.cosine_similarity(embeddings(run, ids, s["batch"]), reference, dim=-1).mean())
                bar.update(1)
            one = serving(engines["fp32 eager"], ids, s["clients"], 1)
            bar.update(1)
            batched = serving(engines["fp32 eager"], ids, s["clients"], s["batch"])
            bar.update(1)
            bar.close()
        return {"n": s["n"], "batch": s["batch"], "clients": s["clients"], "threads": torch.get_num_threads(),
                "rows": rows, "serving": {"one at a time": one, "batched": batched},
                "distillation": {"steps": s["distill_steps"], "sentences": len(train_ids), "lr": s["distill_lr"],
                                 "cosine_before": before, "losses": curves}}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        r, base = m["rows"], m["rows"]["fp32 eager"]
        gains = {name: max(base["latency_ms"] / x["latency_ms"], x["throughput"] / base["throughput"])
                 for name, x in r.items() if name != "fp32 eager"}
        gains["batched serving"] = m["serving"]["batched"] / m["serving"]["one at a time"]
        cosine = {name: x.get("cosine", 1.0) for name, x in r.items()}  # batching serves fp32 eager itself
        pays = {k: [e for e in engines if gains.get(e, 0) >= PAYS and cosine.get(e, 1.0) >= KEEPS]
                for k, engines in STRATEGIES.items()}
        held = [k for k, e in pays.items() if e]
        parts = [f"{name} {g:.2f}x" + (f" (cosine {cosine[name]:.3f})" if name in cosine else "") for name, g in gains.items()]
        d = m["distillation"]
        before = "; ".join(f"{name} {c:.3f} before its {d['steps']} steps of distillation" for name, c in d["cosine_before"].items())
        because = (f"on {m['threads']} CPU threads, fp32 eager {base['latency_ms']:.1f} ms per sentence, "
                   f"{base['throughput']:.0f} sentences/s in batches of {m['batch']}; best gain over it, and mean cosine "
                   f"of the embeddings to fp32's: " + ", ".join(parts)
                   + f" ({before}); serving {m['clients']} one-sentence clients: {m['serving']['one at a time']:.0f}/s one "
                   f"at a time, {m['serving']['batched']:.0f}/s batched")
        numbers = {"strategies that pay": held, **{f"{k}: best gain (x)": round(v, 2) for k, v in gains.items()},
                   **{f"{k}: cosine to fp32": round(v, 4) for k, v in cosine.items() if k != "fp32 eager"}}
        outcome = "confirmed" if len(held) == len(STRATEGIES) else "partly" if held else "refuted"
        return Verdict(outcome, because, numbers)

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "deployment.png"
        names = list(m["rows"])
        with figure(path, f"all-MiniLM-L6-v2 on this CPU ({m['threads']} threads): latency, throughput, fidelity",
                    ncols=3) as (a1, a2, a3):
            a1.barh(names, [m["rows"][n]["latency_ms"] for n in names], color="tab:blue")
            a1.set_xlabel("one sentence: median latency (ms)")
            labels = names + [f"serving, one at a time ({m['clients']} clients)", "serving, batched"]
            values = [m["rows"][n]["throughput"] for n in names] + [m["serving"]["one at a time"], m["serving"]["batched"]]
            a2.barh(labels, values, color=["tab:green"] * len(names) + ["tab:gray", "tab:orange"])
            a2.set_xlabel(f"sentences/s (batches of {m['batch']}; serving: concurrent clients)")
            others = [n for n in names if n != "fp32 eager"]
            a3.barh(others, [m["rows"][n]["cosine"] for n in others], color="tab:purple")
            a3.axvline(KEEPS, color="grey", ls=":", lw=1)
            a3.set_xlabel("mean cosine of the embeddings to fp32 eager's (dotted: 0.95)")
        return [path]
