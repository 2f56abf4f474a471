"""The translation pipeline: parallel data checks, token buckets, Multi30k lookup, and a tiny model
that learns (BLEU from sacrebleu rises over the untrained model)."""

import gzip
import json
import urllib.error

import pytest
import sacrebleu
import torch

from conftest import read_lines
from transformer_lab.cli.main import main
from transformer_lab.data import parallel
from transformer_lab.data.parallel import filter_long, multi30k_files, read_parallel
from transformer_lab.tasks import translation as tr


def write(path, lines):
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


def test_misaligned_files_are_an_error_naming_both(tmp_path):
    a, b = write(tmp_path / "a.de", ["eins", "zwei", "drei"]), write(tmp_path / "b.en", ["one", "two"])
    with pytest.raises(ValueError, match=r"a.de has 3 lines, .*b.en has 2"):
        read_parallel(a, b)


def test_empty_sides_and_long_pairs_are_counted_skips(tmp_path):
    a = write(tmp_path / "a", ["eins", "", "drei", "vier"])
    b = write(tmp_path / "b", ["one", "two", "   ", "four"])
    data = read_parallel(a, b)
    assert data.src == ["eins", "vier"] and data.tgt == ["one", "four"] and data.skipped_empty == 2
    kept = filter_long([[1] * 3, [1] * 9, [1] * 2], [[1] * 2, [1] * 2, [1] * 12], max_len=8)
    assert len(kept) == 1 and kept.skipped_long == 2


def test_multi30k_offline_says_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_LAB_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(parallel.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as e:
        multi30k_files("de", "en", "train")
    message = str(e.value)
    assert "train.de.gz" in message and "train.en.gz" in message and str(tmp_path / "cache") in message
    assert not list((tmp_path / "cache").rglob("*.gz"))  # no half-written file left behind


def test_multi30k_found_in_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_LAB_DATA", str(shared_data))
    src, tgt = multi30k_files("de", "en", "test")
    assert src.name == "test_2016_flickr.de.gz" and len(read_lines(src)) == len(read_lines(tgt)) == 1000


@pytest.fixture(scope="module")
def tiny_run(shared_data, tmp_path_factory):
    """Train a tiny model on 300 short Multi30k pairs (memorising them); returns the run folder
    and the files. Validation = 40 of the training pairs, so a few seconds of training show."""
    tmp = tmp_path_factory.mktemp("mt")
    de = read_lines(shared_data / "multi30k" / "train.de.gz")
    en = read_lines(shared_data / "multi30k" / "train.en.gz")
    short = [i for i in range(len(de)) if len(de[i]) < 50 and len(en[i]) < 50][:300]
    de, en = [de[i] for i in short], [en[i] for i in short]
    files = [write(tmp / n, lines) for n, lines in (("tr.de", de), ("tr.en", en), ("va.de", de[:40]), ("va.en", en[:40]))]
    args = ["train", "--train-src", str(files[0]), "--train-tgt", str(files[1]), "--valid-src", str(files[2]),
            "--valid-tgt", str(files[3]), "--model", "tiny", "--vocab-size", "500", "--max-steps", "160",
            "--schedule", "constant", "--lr", "0.002", "--warmup", "20", "--max-tokens", "800",
            "--eval-every", "80", "--bleu-sample", "40", "--out", str(tmp / "run"), "--cache-dir", str(tmp / "cache"),
            "--no-progress"]
    assert main(args) == 0
    return tmp / "run", files


def test_tiny_pipeline_learns(tiny_run):
    run, files = tiny_run
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    bleus = [float(v) for v in (r.split(",")[header.index("val_bleu")] for r in rows[1:]) if v]
    assert len(bleus) == 2  # validated at step 80 and at the end
    from transformer_lab.runs import load_model
    from transformer_lab.tasks.translation import corpus_scores, load_tokenizers, translate

    loaded = load_model(run / "checkpoints" / "best")
    tok_src, tok_tgt = load_tokenizers(loaded.path)
    src, ref = read_lines(files[2]), read_lines(files[3])
    trained = corpus_scores(translate(loaded.model, tok_src, tok_tgt, src, beam=1), ref)["bleu"]
    torch.manual_seed(0)
    untrained = tr.Transformer(loaded.model.config)
    before = corpus_scores(translate(untrained, tok_src, tok_tgt, src, beam=1), ref)["bleu"]
    assert trained > before + 5, (before, trained)


def test_translate_and_evaluate_commands(tiny_run, capsys, tmp_path):
    run, files = tiny_run
    assert main(["evaluate", "--checkpoint", str(run), "--src", str(files[2]), "--ref", str(files[3]),
                 "--beam", "2", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {"bleu", "chrf", "signature"} <= set(scores) and "tok:13a" in scores["signature"]
    png = tmp_path / "att.png"
    assert main(["translate", "--checkpoint", str(run), "--beam", "3", "--plot-attention", str(png),
                 read_lines(files[2])[0]]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["translate", "--checkpoint", str(run), "--plot-attention", str(png), "", "Zwei Hunde."]) == 2
    assert "the first sentence, whose attention it draws, is blank" in capsys.readouterr().err  # (before any work)
    assert main(["translate", "--checkpoint", str(run), "--beam", "1", "--alpha", "1", "x"]) == 2  # (ignored)
    assert "--alpha: not for --beam 1" in capsys.readouterr().err
    with gzip.open(tmp_path / "x.gz", "wt") as f:
        f.write("a\n")
    assert main(["evaluate", "--checkpoint", str(run), "--src", str(files[2]), "--ref", str(tmp_path / "x.gz")]) == 2


def test_the_attention_drawn_is_the_printed_translations(tiny_run):
    """--plot-attention drew a greedy decoding's attention under a beam search's printed output, with a
    </s> the search never produced. Now: the output is translate's (beam 3 here), and the weights equal
    those the decoder computes step by step (recorded one step at a time, the oracle)."""
    from transformer_lab.generation.search import Seq2SeqStep
    from transformer_lab.tasks.translation import BOS_ID, cross_attention, load_translator, translate

    run, files = tiny_run
    model, tok_src, tok_tgt = load_translator(run)
    for sentence in read_lines(files[2])[:4]:
        for beam in (1, 3):
            src_ids, out_ids, weights = cross_attention(model, tok_src, sentence, beam)
            assert tok_tgt.decode(out_ids) == translate(model, tok_src, tok_tgt, [sentence], beam)[0]
            assert weights.shape == (model.config.n_heads, len(out_ids), len(src_ids))
            assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)
        step = Seq2SeqStep(model, torch.tensor([src_ids]), record_cross_attention=True)
        with torch.no_grad():  # the beam's output fed one step at a time, each step's weights recorded
            for t in range(len(out_ids)):
                step(torch.tensor([[BOS_ID] + out_ids[:t]]))
        torch.testing.assert_close(torch.cat(step.cross_attention, dim=2)[0], weights, atol=1e-5, rtol=0)


def test_static_cache_translates_and_evaluates_as_the_growing_cache(tiny_run, capsys):
    """`translate/evaluate --static-cache` (generation/static_decoding.StaticSeq2Seq, equal batches) print
    what the growing cache prints, greedy and beam; with --no-cache it is a named error."""
    run, files = tiny_run
    sentences = read_lines(files[2])[:12]
    for beam in ("1", "3"):
        outs = []
        for extra in ([], ["--static-cache"]):
            assert main(["translate", "--checkpoint", str(run), "--beam", beam, "--batch-size", "5", *extra,
                         *sentences]) == 0
            outs.append(capsys.readouterr().out)
        assert outs[0] == outs[1] and len(outs[0].splitlines()) == 12
    scores = []
    for extra in ([], ["--static-cache"]):
        assert main(["evaluate", "--checkpoint", str(run), "--src", str(files[2]), "--ref", str(files[3]), "--json",
                     *extra]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == scores[1]
    assert main(["translate", "--checkpoint", str(run), "--static-cache", "--no-cache", "x"]) == 2
    assert "--no-cache" in capsys.readouterr().err


def test_bench_translation_and_decode_json(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFORMER_LAB_DATA", str(shared_data))
    cache = str(tmp_path / "cache")
    assert main(["bench", "translation", "--model", "tiny", "--steps", "1", "--rounds", "1", "--max-tokens", "600",
                 "--cache-dir", cache, "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"ours", "peer", "ratio"} <= set(r) and r["peer_name"] == "torch.nn.Transformer"
    assert main(["bench", "decode", "--sentences", "2", "--beams", "1,2", "--cache-dir", cache, "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"ours", "peer", "ratio"} <= set(d) and set(d["by_beam"]) == {"beam1", "beam2"}
    assert all(row["identical_output"] for row in d["by_beam"].values())  # the cache changes speed, not output
    assert main(["bench", "decode", "--sentences", "3", "--beams", "2", "--static-cache", "--cache-dir", cache,
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["peer_name"] == "growing KV cache" and d["by_beam"]["beam2"]["identical_output"]


def test_evaluate_scores_every_line_blank_ones_included(tiny_run, tmp_path, capsys):
    """Issue 9, item 5: `evaluate` dropped pairs whose source line was blank (BLEU on 18 of 20 pairs,
    --out 18 lines for 20 inputs), and `translate` turned a blank line into "A person.". Now a blank
    source gives a blank translation, every line is scored and written, in order."""
    run, files = tiny_run
    src, ref = read_lines(files[2])[:20], read_lines(files[3])[:20]
    src[3] = src[11] = "   "
    src_file, ref_file, out_file = (write(tmp_path / n, lines) for n, lines in (("s", src), ("r", ref), ("o", [])))
    assert main(["evaluate", "--checkpoint", str(run), "--src", str(src_file), "--ref", str(ref_file), "--beam", "1",
                 "--out", str(out_file), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    hyps = out_file.read_text(encoding="utf-8").split("\n")[:-1]
    assert scores["sentences"] == len(hyps) == 20 and scores["blank_sources"] == 2
    assert hyps[3] == hyps[11] == "" and all(hyps[i] for i in range(20) if i not in (3, 11))
    assert scores["bleu"] == round(sacrebleu.corpus_bleu(hyps, [ref]).score, 2)  # scored on all 20 pairs
    assert main(["translate", "--checkpoint", str(run), "--beam", "1", "first", "", "second"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2]


def test_long_inputs_are_cut_with_a_warning_naming_them(tiny_run, caplog):
    """Issue 9, item 5: inputs over the model's position table were cut without a word."""
    import logging

    run, _ = tiny_run
    model, tok_src, tok_tgt = tr.load_translator(run)
    long = " ".join(["Ein Mann fährt Fahrrad."] * 200)
    with caplog.at_level(logging.WARNING):
        res = tr.translate_detailed(model, tok_src, tok_tgt, ["Ein Hund.", long], beam=1)
    assert res.truncated == [1] and res.texts[1]
    assert f"input 2: {len(tok_src.encode(long))} tokens, cut to the first {model.config.max_len - 2}" in caplog.text


@pytest.mark.parametrize("bad", [0, -1])
def test_batch_size_must_be_positive(tiny_run, bad, capsys):
    """Issue 9, item 2: `--batch-size -1` printed empty translations (BLEU 0.0, exit 0) and 0 a bare
    Python error."""
    run, files = tiny_run
    model, tok_src, tok_tgt = tr.load_translator(run)
    with pytest.raises(ValueError, match="batch_size: expected a positive number"):
        tr.translate(model, tok_src, tok_tgt, ["Ein Hund."], batch_size=bad)
    for cmd in (["translate", "--checkpoint", str(run), "x"],
                ["evaluate", "--checkpoint", str(run), "--src", str(files[2]), "--ref", str(files[3])]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--batch-size", str(bad)])
        assert e.value.code == 2 and "argument --batch-size: expected an integer >= 1" in capsys.readouterr().err


def test_corrupt_tokenizer_config_names_the_file(tiny_run, tmp_path, capsys):
    """Issue 9, item 7: a corrupt tokenizer_config.json gave a traceback that did not name it."""
    import shutil

    run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = copy / "checkpoints" / "best" / "tokenizer" / "tokenizer_config.json"
    config.write_text("{broken")
    assert main(["translate", "--checkpoint", str(copy), "Ein Hund."]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not valid JSON" in err and "Traceback" not in err


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_finetune_translate_with_an_adapter_then_translate_and_merge(tiny_run, tmp_path, capsys, method):
    """`finetune translate --peft`: the run trains only the adapter, lowers the validation loss it
    reports before training, writes OUT/adapter, and translates; a LoRA merged into the base
    (`peft merge`) translates as the adapted run does."""
    run, files = tiny_run
    out = tmp_path / "ft"
    args = ["finetune", "translate", "--model", str(run), "--train-src", str(files[0]), "--train-tgt", str(files[1]),
            "--valid-src", str(files[2]), "--valid-tgt", str(files[3]), "--max-steps", "30", "--warmup", "5",
            "--eval-every", "0", "--max-tokens", "800", "--bleu-sample", "10", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--json", "--peft", method]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["method"] == method and 0 < summary["trainable_parameters"] < 0.05 * summary["total_parameters"]
    assert summary["best_val_loss"] < summary["val_loss_before"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    sentence = read_lines(files[2])[0]
    assert main(["translate", "--checkpoint", str(out), "--beam", "2", sentence]) == 0
    adapted = capsys.readouterr().out
    assert adapted.strip()
    if method == "lora":
        merged = tmp_path / "merged"
        assert main(["peft", "merge", "--model", str(run), "--adapter", str(out / "adapter"), "--out", str(merged)]) == 0
        capsys.readouterr()
        assert main(["translate", "--checkpoint", str(merged), "--beam", "2", sentence]) == 0
        assert capsys.readouterr().out == adapted
    assert main(args[:-2] + ["--peft", method]) == 2  # the folder holds a run: --resume or --overwrite
    # resumed without --peft: with the run's own adapter (refused before, printing the recorded adapter as a dict)
    assert main(args[:12] + ["--resume", str(out), "--max-steps", "31", "--cache-dir", str(tmp_path / "cache"),
                                "--no-progress"]) == 0


def test_a_prompt_leaves_room_in_a_translation_models_positions(tiny_run, tmp_path, caplog):
    """finetune translate --peft prompt|prefix kept pairs as long as --max-len (100), which with the virtual
    positions overflowed the model's table: the run died at its first validation. Pairs that do not fit beside
    them are now skipped, counted, and the log says why."""
    from transformer_lab.tasks.translation import load_translator

    run, files = tiny_run
    table = load_translator(run)[0].config.max_len
    with caplog.at_level("INFO"):
        assert main(["finetune", "translate", "--model", str(run), "--train-src", str(files[0]), "--train-tgt",
                     str(files[1]), "--valid-src", str(files[2]), "--valid-tgt", str(files[3]), "--max-steps", "2",
                     "--eval-every", "0", "--max-tokens", "800", "--bleu-sample", "2", "--out", str(tmp_path / "ft"),
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--peft", "prompt", "--prompt-len",
                     str(table - 12)]) == 0
    assert f"skipped as longer than 11 tokens: the model's {table} positions less {table - 12} prefix or prompt" in caplog.text


def test_finetune_translate_without_data_names_the_options(tmp_path, capsys):
    assert main(["finetune", "translate", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--data multi30k" in capsys.readouterr().err
    files = [str(write(tmp_path / n, ["a b", "c d"])) for n in ("a.fr", "a.en", "b.fr", "b.en")]
    assert main(["finetune", "translate", "--model", str(tmp_path / "none"), "--train-src", files[0], "--train-tgt",
                 files[1], "--valid-src", files[2], "--valid-tgt", files[3], "--out", str(tmp_path / "o")]) == 2
    assert "none" in capsys.readouterr().err  # the missing model folder is named


def test_translate_shows_progress_on_a_terminal(tiny_run, monkeypatch, capsys):
    """`evaluate` on 1,000 sentences printed nothing for a minute; on a terminal a bar of sentences now
    runs on stderr (not with --no-progress, nor when stderr is a file or pipe)."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    run, files = tiny_run
    for extra, shown in (([], True), (["--no-progress"], False)):
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        assert main(["translate", "--checkpoint", str(run), "--beam", "1", *extra, *read_lines(files[2])[:5]]) == 0
        assert ("translate:" in err.getvalue() and "/5 " in err.getvalue()) == shown, err.getvalue()
        assert len(capsys.readouterr().out.strip().splitlines()) == 5


def test_a_translation_run_resumes_as_its_preset_with_its_own_tokenizer(shared_data, tmp_path, monkeypatch, capsys):
    """`train --resume RUN` alone was taken for the dates demo (refused, naming vocabulary sizes); resumed
    with other data (--preset multi30k-fr-en) it trained a new vocabulary of the same size under the weights,
    whose rows then meant other pieces (1,733 of 2,000 ids, in the walk that found it). Now a run resumes as
    its preset, and reads any data with the tokenizer its weights were trained with."""
    from transformer_lab.runs.checkpoint import recorded_settings

    monkeypatch.setenv("TRANSFORMER_LAB_DATA", str(shared_data))
    run, cache = tmp_path / "run", str(tmp_path / "cache")
    assert main(["train", "--preset", "multi30k-de-en", "--model", "tiny", "--vocab-size", "500", "--max-tokens", "600",
                 "--eval-every", "0", "--bleu-sample", "0", "--max-steps", "1", "--cache-dir", cache, "--out", str(run),
                 "--no-progress"]) == 0
    tokenizer = run / "checkpoints" / "last" / "tokenizer"
    files = {p.name: p.read_bytes() for p in tokenizer.iterdir()}
    assert main(["train", "--resume", str(run), "--max-steps", "2", "--cache-dir", cache, "--no-progress"]) == 0
    assert recorded_settings(run / "checkpoints" / "last")[2]["name"] == "multi30k-de-en"
    assert main(["train", "--preset", "multi30k-fr-en", "--resume", str(run), "--max-steps", "3", "--cache-dir", cache,
                 "--no-progress", "--vocab-size", "300", "--separate-vocab"]) == 0  # (ignored, and said so)
    assert {p.name: p.read_bytes() for p in tokenizer.iterdir()} == files
    settings = recorded_settings(run / "checkpoints" / "last")[2]
    assert (settings["vocab_size"], settings["joint"], settings["src"]) == (500, True, "fr")  # what was used
    # options a translation does not read are refused (they were ignored: --src fr trained German to English)
    capsys.readouterr()
    for args, message in ((["--src", "fr"], "--preset multi30k-de-en translates de to en; for fr to en: --preset "
                                             "multi30k-fr-en"),
                          (["--batch-size", "2", "--n-test", "3"], "--batch-size, --n-test: not for a translation model")):
        assert main(["train", "--preset", "multi30k-de-en", *args, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err


def test_a_resumed_translation_run_keeps_its_settings(tiny_run, tmp_path, caplog, capsys):
    """A translation run resumed with its data alone took the defaults for the rest: the multi30k model
    (refused: another shape), an 8,000-token vocabulary, 4,000 tokens a batch, BLEU on 200 sentences."""
    import shutil

    from transformer_lab.runs.checkpoint import recorded_settings

    run, files = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = ["--train-src", str(files[0]), "--train-tgt", str(files[1]), "--valid-src", str(files[2]),
            "--valid-tgt", str(files[3])]
    with caplog.at_level("WARNING"):
        assert main(["train", *data, "--resume", str(copy), "--max-steps", "162", "--no-progress",
                     "--cache-dir", str(run.parent / "cache")]) == 0
    settings = recorded_settings(copy / "checkpoints" / "last")[2]
    assert (settings["model"], settings["vocab_size"], settings["max_tokens"], settings["bleu_sample"]) == ("tiny", 500, 800, 40)
    assert "task settings" not in caplog.text
    assert main(["train", "--resume", str(copy), "--max-steps", "163"]) == 2  # (it was taken for the dates demo)
    assert "a translation run on its own files; resume it with them" in capsys.readouterr().err
    assert main(["train", *data, "--src", "de", "--out", str(tmp_path / "x")]) == 2
    assert "--src: not for the --train-src/... files" in capsys.readouterr().err
    # a language model is told which options are a translation's (they were ignored)
    assert main(["train", "--preset", "lm", "--data", str(files[0]), "--max-tokens", "800", "--n-test", "5",
                 "--out", str(tmp_path / "lm")]) == 2
    assert "--max-tokens, --n-test: not for a language model" in capsys.readouterr().err


def test_bigbird_random_blocks_translate_and_embed_a_text_as_alone(tiny_run):
    """BigBird's random blocks are drawn among the padded length's blocks, so a sentence padded beside a
    longer one was encoded otherwise than alone (encoder outputs 1.08 apart): `translate`, `evaluate`,
    `embed` and `classify` changed with what a text was batched with. Under such a pattern their batches
    are now of one length. The oracle: each text alone."""
    from dataclasses import replace

    from transformer_lab.data.batches import inference_batches
    from transformer_lab.models.bert import Bert, BertConfig, mean_pool
    from transformer_lab.tasks.embed import by_length

    assert inference_batches([0, 1, 2, 3], [5, 5, 5, 7], 2, same_length=True) == [[0, 1], [2], [3]]
    assert inference_batches([0, 1, 2, 3], [5, 5, 5, 7], 2) == [[0, 1], [2, 3]]
    run, _ = tiny_run
    model, tok_src, tok_tgt = tr.load_translator(run)
    torch.manual_seed(0)
    sparse = type(model)(replace(model.config, attention="block:2,random:1")).eval()
    sentences = ["Ein Hund.", "Ein Mann fährt Fahrrad.", "Zwei Kinder spielen im Sand am Strand.",
                 "Eine Frau mit einem roten Hut liest ein Buch in einem Park neben einem großen Baum."]
    memories = {}  # each source's encoder rows (its real positions), as the decoding read them
    encode = sparse.encode

    def recorded(src, *a, **k):
        memory = encode(src, *a, **k)
        for row, m in zip(src.tolist(), memory):
            ids = tuple(t for t in row if t != 0)
            memories.setdefault(ids, []).append(m[: len(ids)])
        return memory

    sparse.encode = recorded
    alone = [tr.translate(sparse, tok_src, tok_tgt, [s], beam=1)[0] for s in sentences]
    assert tr.translate(sparse, tok_src, tok_tgt, sentences, beam=1) == alone
    assert len(memories) == len(sentences)
    for first, second in memories.values():
        torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-4)
    torch.manual_seed(0)
    bert = Bert(BertConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=40,
                           attention="block:2,random:1")).eval()
    ids = [[2] + list(range(5, 5 + n)) + [3] for n in (3, 9, 20)]
    head = lambda m, t, mask: mean_pool(m(t, attention_mask=mask).hidden, mask)  # noqa: E731  (embed's rows)
    together = by_length(bert, ids, 8, head)
    for row, one in zip(together, ids):
        torch.testing.assert_close(row[None], by_length(bert, [one], 8, head), atol=1e-5, rtol=1e-4)
