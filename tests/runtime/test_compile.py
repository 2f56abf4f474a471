"""``runtime.compile_for_inference`` (`embed --compile`, `serve --compile`, `bench quantize --compile`):
the compiled encoder gives the eager model's outputs (fp32 within 1e-5; per-token INT8, whose rounding
inductor may compute with a reciprocal, within a cosine of 0.999), and batches of new sizes and lengths
reuse the one dynamic graph instead of recompiling (oracle: Dynamo's own ``error_on_recompile``)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from transformer_lab.compression import quantize_model
from transformer_lab.compression.model import PRESETS
from transformer_lab.models.bert import Bert, BertConfig, mean_pool
from transformer_lab.runtime import compile_for_inference, unwrap
from transformer_lab.serving.app import ServeConfig, build_app
from transformer_lab.tasks.embed import by_length

V = 97


def _pooled(m, tokens, mask):
    return mean_pool(m(tokens, attention_mask=mask).hidden, mask)


def _ids(g: torch.Generator, n: int, lo: int, hi: int) -> list[list[int]]:
    return [torch.randint(1, V, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def test_compiled_encoder_equals_eager_and_reuses_one_graph():
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64, dropout=0.0,
                            attention_dropout=0.0)).eval()
    g = torch.Generator().manual_seed(0)
    first, later = _ids(g, 9, 3, 20), _ids(g, 7, 20, 40)  # batches 4, 4, 1 (one is specialised apart), then 3, 3, 1
    int8 = quantize_model(copy.deepcopy(model), PRESETS["dynamic"]).eval()
    for m, close in ((model, None), (int8, 0.999)):
        torch._dynamo.reset()
        compiled = compile_for_inference(m)
        assert unwrap(compiled) is m
        for ids, batch in ((first, 4), (later, 3)):
            with torch._dynamo.config.patch(error_on_recompile=ids is later):  # the first batches compiled it
                got = by_length(compiled, ids, batch, _pooled)
            want = by_length(m, ids, batch, _pooled)
            if close is None:
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            else:
                assert F.cosine_similarity(got, want).min() > close


def test_serve_compiles_bert_only(tmp_path):
    from transformer_lab.models.gpt import GPT, GPTConfig
    from transformer_lab.runs import save_checkpoint
    from transformer_lab.tokenizers.char import CharTokenizer

    pytest.importorskip("fastapi")
    tok = CharTokenizer.train("abcdefgh")
    save_checkpoint(tmp_path / "gpt", GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=16, d_model=16, n_heads=2,
                                                    n_layers=1, d_ff=32)), {})
    tok.save(tmp_path / "gpt" / "char_tokenizer.json")
    with pytest.raises(ValueError, match="BERT models"):
        build_app(ServeConfig(str(tmp_path / "gpt"), compile=True))
