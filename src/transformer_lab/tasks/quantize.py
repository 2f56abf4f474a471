"""`transformer-lab quantize`: a trained model into a quantized checkpoint that every command loads.

Sources: one of our run or checkpoint folders (translation, GPT, BERT), a Hugging Face BERT folder
(e.g. all-MiniLM-L6-v2, or what `finetune classify` exports) or a GPT-2 folder. The output is a
checkpoint folder (``runs.checkpoint``; config.json records the quantization) with the source's
tokenizer files beside it, so `translate`, `evaluate`, `generate`, `embed` and `similarity` read it
as they read the fp32 model.

Calibration (the static scheme, SmoothQuant) runs the fp32 model over lines of ``calib_data`` the
way it is used: a translation model translates them (greedy, with its cache, so the decoder sees its
own outputs), a GPT reads them as one stream in windows, a BERT encodes them one per sequence.
Text that the model's tokenizer cuts into many more pieces per word than text in its language gets
(wrong language, wrong domain) is refused unless ``any_text``.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transformer_lab.compression import QuantConfig, QuantLinear, linear_weight_bytes, quantize_model
from transformer_lab.compression.model import tied_output_layers
from transformer_lab.config import check_positive, read_json_object, to_dict
from transformer_lab.files import check_new_folder
from transformer_lab.tokenizers.corpus import read_lines
from transformer_lab.models.bert import Bert, mean_pool
from transformer_lab.models.gpt import GPT
from transformer_lab.models.hf import gpt_from_hf, hf_folder, load_bert
from transformer_lab.models.transformer import Transformer
from transformer_lab.runs import find_checkpoint, is_ours, load_model, run_folder_of, save_checkpoint
from transformer_lab.runs.checkpoint import HF_TOKENIZER_FILES, QUANTIZATION, REQUIRED, companion_files, recorded_settings
from transformer_lab.tasks.embed import by_length, cut_length, encode_texts
from transformer_lab.tasks.translation import load_tokenizers, translate
from transformer_lab.tokenizers.char import CharTokenizer
from transformer_lab.tokenizers.io import checkpoint_tokenizer, load_bert_tokenizer

log = logging.getLogger(__name__)

# Subword tokenizers cut text in their own language into 1.1-1.4 pieces per word (measured: Multi30k's
# joint de-en BPE on de 1.35 / en 1.19; all-MiniLM-L6-v2's WordPiece on English 1.13-1.24) and text in
# another language into about 2 (French under the de-en BPE 2.34, German under MiniLM's 2.11). Small
# vocabularies cut every text finely (a 300-token BPE: 4.4 on its own training text): checked from 5,000.
MAX_PIECES_PER_WORD = 1.8
CHECKED_VOCAB_SIZE = 5000


@dataclass(frozen=True)
class QuantizeConfig:
    checkpoint: str  # the fp32 model: our run/checkpoint folder, an HF BERT or GPT-2 folder
    out: str  # the quantized checkpoint folder to write
    quant: QuantConfig = field(default_factory=QuantConfig)
    calib_data: str | None = None  # text, one sample per line (plain or .gz)
    calib_samples: int = 256  # lines used (the first N non-blank)
    batch_size: int = 16
    overwrite: bool = False  # replace an existing OUT
    any_text: bool = False  # skip the tokenizer's check that the calibration text is in the model's language

    def __post_init__(self) -> None:
        check_positive("calib_samples", self.calib_samples)
        check_positive("batch_size", self.batch_size)


@dataclass
class Source:
    model: nn.Module
    folder: Path  # where its tokenizer files are
    tokenizer_files: list[Path]  # copied into the quantized checkpoint
    tokenizer: Any  # the input side's tokenizer
    target_tokenizer: Any = None  # a translation model's output side


def load_source(path: str | Path) -> Source:
    """The fp32 model at ``path`` and what it needs to read text."""
    path = Path(path)
    if is_ours(path):
        loaded = load_model(find_checkpoint(path))
        folder, model = loaded.path, loaded.model
        files = companion_files(folder)
        if isinstance(model, Transformer):
            tok_src, tok_tgt = load_tokenizers(folder)
            return Source(model, folder, files, tok_src, tok_tgt)
        tok = load_bert_tokenizer(folder) if isinstance(model, Bert) else checkpoint_tokenizer(folder)
        return Source(model, folder, files, tok)
    kind, _ = hf_folder(path, "quantize")
    files = hf_tokenizer_files(path)
    if kind == "bert":
        return Source(load_bert(path), path, files, load_bert_tokenizer(path))
    return Source(gpt_from_hf(path), path, files, checkpoint_tokenizer(path))


def refuse_peft_run(source: Source, then: str) -> None:
    """A `--peft` run's model is its base with the adapter: name the run, and the merge that makes a plain
    model of it (``then``: what to do with that, "quantize", "export")."""
    adapter = getattr(source.model, "adapter_config", None)
    if adapter is None:
        return
    run = run_folder_of(source.folder) or source.folder
    base = recorded_settings(source.folder)[2].get("model") or "BASE"
    if adapter.method not in ("lora", "qlora"):
        raise ValueError(f"{run}: a --peft {adapter.method} run; a {adapter.method} adapter adds inputs, not weights, "
                         f"and does not merge into a plain model to {then}")
    raise ValueError(f"{run}: a --peft {adapter.method} run (its base with the adapter); merge them first, then {then} "
                     f"the merged model: transformer-lab peft merge --model {base} --adapter {run / 'adapter'} --out MERGED")


def calibration_texts(path: str | Path, samples: int) -> list[str]:
    """The first ``samples`` non-blank lines of ``path``."""
    lines = [line for line in read_lines(path) if line.strip()][:samples]
    if not lines:
        raise ValueError(f"{path}: no calibration text (the file has no non-blank line)")
    return lines


def check_language(tok: Any, texts: list[str], where: str) -> float | None:
    """Pieces per whitespace word of ``texts`` under ``tok``; ValueError above MAX_PIECES_PER_WORD
    (a character tokenizer or a vocabulary under CHECKED_VOCAB_SIZE is not checked: they take
    every text apart finely; returns None)."""
    if isinstance(tok, CharTokenizer) or tok.vocab_size < CHECKED_VOCAB_SIZE:
        return None
    pieces = sum(len(tok.encode(t)) for t in texts)
    words = sum(len(t.split()) for t in texts)
    ratio = pieces / max(words, 1)
    if ratio > MAX_PIECES_PER_WORD:
        raise ValueError(f"{where}: the model's tokenizer cuts this text into {ratio:.2f} pieces per word (text in "
                         f"the language it was trained on takes 1.1-1.4); is it in the model's input language? "
                         "Calibrate on text like the model's inputs (or pass --any-text to use it anyway)")
    return ratio


def calibrator(source: Source, texts: list[str], batch_size: int) -> Callable[[nn.Module], None]:
    """A function running a model over ``texts`` as the model is used."""
    model = source.model
    if isinstance(model, Transformer):
        return lambda m: translate(m, source.tokenizer, source.target_tokenizer, texts, beam=1, batch_size=batch_size)
    if isinstance(model, GPT):
        ids = source.tokenizer.encode("\n".join(texts))
        window = min(model.config.max_len, 256)
        chunks = [ids[i:i + window] for i in range(0, max(len(ids) - 1, 1), window)]

        def run_gpt(m: nn.Module) -> None:
            with torch.no_grad():
                for i in range(0, len(chunks), batch_size):
                    group = chunks[i:i + batch_size]
                    n = min(map(len, group))
                    m(torch.tensor([c[:n] for c in group]))
        return run_gpt
    ids = encode_texts(source.tokenizer, texts, model.config.max_len)
    return lambda m: by_length(m, ids, batch_size, lambda mm, t, mask: mm(t, attention_mask=mask).hidden[:, 0])


AGREEMENT_LINES = 64  # calibration lines the agreement with fp32 is measured on


def agreement(source: Source, fp32: nn.Module, quantized: nn.Module, texts: list[str], batch_size: int) -> dict:
    """How close the quantized model stays to the fp32 one on (up to AGREEMENT_LINES of) the calibration texts."""
    texts = texts[:AGREEMENT_LINES]
    model = source.model
    if isinstance(model, Transformer):
        a, b = (translate(m, source.tokenizer, source.target_tokenizer, texts, beam=1, batch_size=batch_size)
                for m in (fp32, quantized))
        return {"same_greedy_translation": round(sum(x == y for x, y in zip(a, b)) / len(texts), 4)}
    if isinstance(model, GPT):
        ids = torch.tensor(source.tokenizer.encode("\n".join(texts))[: model.config.max_len])[None]
        with torch.no_grad():
            pa, pb = fp32(ids).argmax(-1), quantized(ids).argmax(-1)
        return {"same_next_token": round(float((pa == pb).float().mean()), 4)}
    ids = encode_texts(source.tokenizer, texts, model.config.max_len)

    def pooled(m):
        return by_length(m, ids, batch_size, lambda mm, t, mask: mean_pool(mm(t, attention_mask=mask).hidden, mask))

    return {"min_cosine_of_embeddings": round(float(F.cosine_similarity(pooled(fp32), pooled(quantized)).min()), 4)}


def run(cfg: QuantizeConfig) -> dict[str, Any]:
    """Quantize ``cfg.checkpoint`` into ``cfg.out``; returns the summary (also in OUT/meta.json)."""
    out = Path(cfg.out)
    check_output(out, cfg.checkpoint, cfg.overwrite, earlier=is_quantized_checkpoint, what="quantized checkpoint")
    source = load_source(cfg.checkpoint)
    refuse_peft_run(source, "quantize")
    model = source.model.eval()
    if getattr(model, "quant_config", None) is not None:
        raise ValueError(f"{cfg.checkpoint}: already quantized ({model.quant_config.scheme}, {model.quant_config.bits}-bit); "
                         "quantize the fp32 checkpoint it was made from")
    texts = calibration_texts(cfg.calib_data, cfg.calib_samples) if cfg.calib_data else []
    if cfg.quant.needs_calibration and not texts:
        raise ValueError("calib_data: the static scheme and --smooth calibrate on sample inputs; give --calib-data "
                         "FILE (text like the model's inputs, one sample per line)")
    if cfg.quant.tied and not tied_output_layers(model):
        raise ValueError(f"--tied: this {type(model).__name__} has no output layer tied to an embedding table; there "
                         "is nothing more for it to quantize")
    pieces = None
    if texts and not cfg.any_text:
        pieces = check_language(source.tokenizer, texts, str(cfg.calib_data))
    fp32 = copy.deepcopy(model)
    fp32_bytes = linear_weight_bytes(model)
    quantize_model(model, cfg.quant, calibrate=calibrator(source, texts, cfg.batch_size) if texts else None)
    summary = {"source": str(source.folder), "model_type": type(model).__name__, **to_dict(model.quant_config),
               "layers_quantized": sum(isinstance(m, QuantLinear) for m in model.modules()),
               "calibration_samples": len(texts), "calibration_pieces_per_word": pieces,
               "linear_weight_bytes": {"fp32": fp32_bytes, "quantized": linear_weight_bytes(model)}}
    summary["linear_weights_smaller"] = round(fp32_bytes / summary["linear_weight_bytes"]["quantized"], 2)
    if isinstance(model, Bert) and model.config.n_labels:  # a classifier keeps the length its texts are cut to
        summary["task_settings"] = {"max_len": cut_length(source.folder, fp32)}
    if texts:
        summary["agreement_with_fp32"] = agreement(source, fp32, model, texts, cfg.batch_size)
        summary["agreement_lines"] = min(len(texts), AGREEMENT_LINES)
    save_checkpoint(out, model, summary, extra=copied(source.tokenizer_files))  # (an earlier one: replaced atomically)
    summary["file_bytes"] = {"fp32": _weights_file_bytes(source.folder), "quantized": (out / "model.safetensors").stat().st_size}
    return summary


def check_output(out: Path, checkpoint: str | Path, overwrite: bool = False,
                 earlier: Callable[[Path], bool] | None = None, what: str = "output",
                 also_reads: Sequence[Path] = ()) -> None:
    """``files.check_new_folder`` for a command that writes a model made from ``checkpoint`` (quantize,
    export, peft merge): the output may not be or hold ``checkpoint``, nor be, hold or lie inside the
    checkpoint folder it resolves to (``find_checkpoint``: a run's best, else its last), which a save
    replaces whole."""
    resolved = []
    if is_ours(checkpoint):
        try:
            resolved = [find_checkpoint(checkpoint)]
        except (FileNotFoundError, ValueError):
            pass  # (loading says what is wrong with it)
    check_new_folder(out, overwrite, remedy="--overwrite to replace it" if earlier else None,
                     reads=[Path(checkpoint), *resolved, *also_reads], earlier=earlier, what=what, sealed=resolved)


def is_quantized_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint this command wrote (``--overwrite`` replaces nothing else)."""
    try:
        return all((folder / n).is_file() for n in REQUIRED) and QUANTIZATION in read_json_object(folder / "config.json")
    except ValueError:
        return False


def _copier(src: Path) -> Callable[[Path], None]:
    return (lambda dst: shutil.copytree(src, dst)) if src.is_dir() else (lambda dst: shutil.copyfile(src, dst))


def copied(files: list[Path]) -> dict[str, Callable[[Path], None]]:
    """``save_checkpoint``'s ``extra``: each file or folder copied in under its name."""
    return {p.name: _copier(p) for p in files}


def hf_tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files of a Hugging Face model folder."""
    return [folder / n for n in HF_TOKENIZER_FILES if (folder / n).is_file()]


def _weights_file_bytes(folder: Path) -> int | None:
    path = folder / "model.safetensors"
    return path.stat().st_size if path.is_file() else None
