"""`deployment`: which optimisations pay when a Transformer is deployed on given hardware?

The canon lists quantization, pruning, distillation, batching and hardware-specific kernels. This
project builds three of them, measured here on all-MiniLM-L6-v2 sentence embeddings (SST-2 sentences,
as a service would receive them) on this machine's CPU:

- quantization: our dynamic INT8 (``compression``), onnxruntime's dynamic INT8;
- specialised kernels and runtimes: onnxruntime (graph optimisations, its own kernels) and
  torch.compile (inductor's fused C++ kernels) on the fp32 model;
- batching: the server's request batching (``serving.app.Worker``) with concurrent clients sending one
  sentence each, against the same worker taking them one at a time.

Per engine: latency of one sentence (median over sentences, batch 1) and throughput of a stream of
sentences sent in batches of 32 (sorted by length, as the embed task batches). Pruning and
distillation are not built here and are not measured.
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
from torch import nn

from transformer_lab.compression import QuantConfig, quantize_model
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
STRATEGIES = {"quantization": ("ours int8", "onnxruntime int8"), "kernels and runtimes": ("onnxruntime fp32", "compiled fp32"),
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
            "fp32 eager, our INT8, onnxruntime fp32 and INT8, torch.compile (full budget), and the server's request "
            "batching with concurrent one-sentence clients against one at a time. A strategy pays if one of its "
            "engines reaches 1.2x fp32 eager's latency or throughput. Of the three strategies built here "
            "(quantization, kernels and runtimes, batching): confirmed if all pay, partly if one or two, refuted if "
            "none. Pruning and distillation are not measured (not built).")
    budgets = {"smoke": dict(n=16, singles=4, batch=8, clients=4, compile=False),
               "quick": dict(n=256, singles=32, batch=32, clients=8, compile=False),
               "full": dict(n=872, singles=64, batch=32, clients=16, compile=True)}

    def run(self, s: dict[str, Any], ctx: Context) -> dict[str, Any]:
        folder = minilm_folder()
        tok = load_bert_tokenizer(folder)
        fp32 = load_bert(folder, pretraining_heads=False, n_labels=0).eval()
        ids = encode_texts(tok, sst2_subset(0, s["n"])[2], 128)
        engines: dict[str, Callable] = {"fp32 eager": _torch_engine(fp32),
                                        "ours int8": _torch_engine(quantize_model(copy.deepcopy(fp32), QuantConfig()))}
        with tempfile.TemporaryDirectory() as tmp:
            path = export_bert(fp32, Path(tmp) / "model.onnx")
            threads = torch.get_num_threads()
            engines["onnxruntime fp32"] = _ort_engine(onnx_session(path, threads), fp32.config.pad_id)
            engines["onnxruntime int8"] = _ort_engine(onnx_session(quantize_onnx(path), threads), fp32.config.pad_id)
            if s["compile"]:
                engines["compiled fp32"] = _torch_engine(torch.compile(copy.deepcopy(fp32), dynamic=True))
            bar = ctx.bar(len(engines) + 2, self.id)
            rows = {}
            for name, run in engines.items():
                rows[name] = measure(run, ids, s["singles"], s["batch"])
                bar.update(1)
            one = serving(engines["fp32 eager"], ids, s["clients"], 1)
            bar.update(1)
            batched = serving(engines["fp32 eager"], ids, s["clients"], s["batch"])
            bar.update(1)
            bar.close()
        return {"n": s["n"], "batch": s["batch"], "clients": s["clients"], "threads": torch.get_num_threads(),
                "rows": rows, "serving": {"one at a time": one, "batched": batched}}

    def verdict(self, m: dict[str, Any]) -> Verdict:
        r, base = m["rows"], m["rows"]["fp32 eager"]
        gains = {name: max(base["latency_ms"] / x["latency_ms"], x["throughput"] / base["throughput"])
                 for name, x in r.items() if name != "fp32 eager"}
        gains["batched serving"] = m["serving"]["batched"] / m["serving"]["one at a time"]
        pays = {k: [e for e in engines if gains.get(e, 0) >= PAYS] for k, engines in STRATEGIES.items()}
        held = [k for k, e in pays.items() if e]
        parts = [f"{name} {g:.2f}x" for name, g in gains.items()]
        because = (f"on {m['threads']} CPU threads, fp32 eager {base['latency_ms']:.1f} ms per sentence, "
                   f"{base['throughput']:.0f} sentences/s in batches of {m['batch']}; best gain over it: " + ", ".join(parts)
                   + f"; serving {m['clients']} one-sentence clients: {m['serving']['one at a time']:.0f}/s one at a time, "
                   f"{m['serving']['batched']:.0f}/s batched; pruning and distillation not measured")
        numbers = {"strategies that pay": held, **{f"{k}: best gain (x)": round(v, 2) for k, v in gains.items()}}
        outcome = "confirmed" if len(held) == len(STRATEGIES) else "partly" if held else "refuted"
        return Verdict(outcome, because, numbers)

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        path = folder / "deployment.png"
        names = list(m["rows"])
        with figure(path, f"all-MiniLM-L6-v2 on this CPU ({m['threads']} threads): latency and throughput",
                    ncols=2) as (a1, a2):
            a1.barh(names, [m["rows"][n]["latency_ms"] for n in names], color="tab:blue")
            a1.set_xlabel("one sentence: median latency (ms)")
            labels = names + [f"serving, one at a time ({m['clients']} clients)", "serving, batched"]
            values = [m["rows"][n]["throughput"] for n in names] + [m["serving"]["one at a time"], m["serving"]["batched"]]
            a2.barh(labels, values, color=["tab:green"] * len(names) + ["tab:gray", "tab:orange"])
            a2.set_xlabel(f"sentences/s (batches of {m['batch']}; serving: concurrent clients)")
        return [path]
