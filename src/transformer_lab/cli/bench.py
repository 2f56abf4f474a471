"""`transformer-lab bench ...`: ours and the peer side by side in one process (`bench peft`: one fresh
process per run, for its peak memory), the ratio printed
(``--json``: one object with at least ``ours``, ``peer`` and ``ratio``). The benchmarks live in
``transformer_lab.bench``; this module turns arguments into calls and prints."""

from __future__ import annotations

import argparse
import json
import logging
import textwrap

from tqdm import tqdm

from transformer_lab.bench import attention, bert, ddp, gpt, int8, model, peft, quantize, tokenizer, translation
from transformer_lab.bench.harness import BenchResult
from transformer_lab.cli.args import add_threads, non_negative_int, positive_float, positive_int, seed
from transformer_lab.models.presets import PRESETS

log = logging.getLogger("transformer_lab")

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ours against the peer library",
                       description="Benchmarks: ours and the peer side by side in one process.")
    bsub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)

    m = _parser(bsub, "model", "encoder-decoder vs torch.nn.Transformer", model.__doc__)
    m.add_argument("--preset", default="base", choices=sorted(PRESETS))
    m.add_argument("--batch", type=positive_int, default=32, help="sentences per batch")
    m.add_argument("--length", type=positive_int, default=24, help="source and target length")
    m.add_argument("--vocab-size", type=positive_int, default=None, help="shared vocabulary (default: the preset's)")
    m.add_argument("--steps", type=positive_int, default=5, help="timed steps per round")
    m.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds per side")
    m.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    m.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    m.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16 autocast (GPU)")
    m.add_argument("--compile", action="store_true", help="both models under torch.compile")
    m.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="the device's peak for MFU (default: a known GPU's dense bf16 peak; none on a CPU)")
    m.set_defaults(run=lambda a: model.bench_model(a.preset, a.batch, a.length, a.vocab_size, a.steps, a.rounds, a.threads,
                                                   a.device, a.precision, a.compile, a.peak_tflops))

    tr = _parser(bsub, "translation", "training step in the translation pipeline vs nn.Transformer", translation.__doc__)
    tr.add_argument("--model", default="multi30k", choices=sorted(PRESETS))
    tr.add_argument("--steps", type=positive_int, default=6, help="batches per round")
    tr.add_argument("--rounds", type=positive_int, default=3)
    tr.add_argument("--max-tokens", type=positive_int, default=4000)
    tr.add_argument("--cache-dir", default=None, help="encoded-data cache (default: ~/.cache/transformer_lab)")
    add_threads(tr)
    tr.set_defaults(run=lambda a: translation.bench_translation(a.model, a.steps, a.rounds, a.max_tokens, a.cache_dir))

    dec = _parser(bsub, "decode", "decoding speed with and without the KV cache",
                  textwrap.fill("Sentences/s translating Multi30k de-en validation sentences, greedy and beam: ours with the KV "
                  "cache against the same model without one (the decoder re-run over the whole prefix each step); "
                  "with --static-cache / --compile, our static cache (compiled) against the growing cache it "
                  "replaces (a first untimed pass compiles).", 100))
    dec.add_argument("--checkpoint", default=None, help="a trained translation run or checkpoint (default: untrained multi30k model)")
    dec.add_argument("--sentences", type=positive_int, default=100)
    dec.add_argument("--beams", default="1,4", help="comma-separated beam sizes")
    dec.add_argument("--cache-dir", default=None, help="encoded-data cache (default: ~/.cache/transformer_lab)")
    dec.add_argument("--static-cache", action="store_true", help="ours: the static K/V cache; peer: the growing one")
    dec.add_argument("--compile", action="store_true", help="ours: the static cache's step compiled (CUDA graphs on "
                                                            "a GPU); a first untimed pass compiles")
    dec.add_argument("--device", default="cpu")
    dec.add_argument("--batch-size", type=positive_int, default=64, help="sentences a batch (translate's --batch-size)")
    add_threads(dec)
    dec.set_defaults(run=lambda a: translation.bench_decode(a.checkpoint, a.sentences, _ints(a.beams, "--beams"),
                                                            a.cache_dir, a.static_cache, a.compile, a.device,
                                                            a.batch_size))

    t = _parser(bsub, "tokenizer", "our tokenizers vs HF tokenizers on Multi30k English train", tokenizer.__doc__)
    t.add_argument("--algo", default="all", choices=["all", *tokenizer.ALGORITHMS])
    t.add_argument("--data", default=None, help="corpus file (default: $TRANSFORMER_LAB_DATA/multi30k/train.en.gz)")
    t.add_argument("--vocab-size", type=positive_int, default=8000, help="bytelevel and wordpiece vocabulary")
    t.add_argument("--merges", type=positive_int, default=8000, help="bpe merges")
    add_threads(t)
    t.set_defaults(run=lambda a: tokenizer.bench_tokenizer(a.algo, a.data, a.vocab_size, a.merges))

    for name, help, doc, run, batch in (
            ("bert", "BERT encoder forward: ours vs HF BertModel, same weights", bert.__doc__,
             lambda a: bert.bench_bert(a.model, a.batch, a.length, a.steps, a.rounds), 32),
            ("int8", "INT8 BERT encoder: our dynamic QuantLinear vs torch.ao dynamic INT8, each beside fp32", int8.__doc__,
             lambda a: int8.bench_int8(a.model, a.batch, a.length, a.steps, a.rounds, a.compile), 8)):
        b = _parser(bsub, name, help, doc)
        b.add_argument("--model", default=None,
                       help="an HF BERT folder (default: all-MiniLM-L6-v2 if installed, else random BERT-base)")
        b.add_argument("--batch", type=positive_int, default=batch)
        b.add_argument("--length", type=positive_int, default=128)
        b.add_argument("--steps", type=positive_int, default=3, help="timed forwards per round")
        b.add_argument("--rounds", type=positive_int, default=5)
        if name == "int8":
            b.add_argument("--compile", action="store_true", help="ours (and an fp32 reference) under torch.compile")
        add_threads(b)
        b.set_defaults(run=run)

    g = _parser(bsub, "gpt", "GPT generation (cache / no cache) and training: ours vs HF GPT-2", gpt.__doc__)
    g.add_argument("--n-layers", type=positive_int, default=12, help="GPT-2 small has 12; fewer for a quick run")
    g.add_argument("--batches", default="1,8", help="generation batch sizes")
    g.add_argument("--prompt-len", type=positive_int, default=16)
    g.add_argument("--new-tokens", type=positive_int, default=32)
    g.add_argument("--train-batch", type=positive_int, default=4)
    g.add_argument("--train-len", type=positive_int, default=128)
    g.add_argument("--rounds", type=positive_int, default=4, help="generation rounds per side (interleaved; median)")
    g.add_argument("--train-rounds", type=positive_int, default=6, help="training-step rounds per side")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    g.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="training: bf16 autocast (GPU)")
    g.add_argument("--compile", action="store_true",
                   help="both models under torch.compile: training, and the static-cache generation rows "
                        "(then the headline row)")
    g.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="the device's peak for MFU (default: a known GPU's dense bf16 peak; none on a CPU)")
    add_threads(g)
    g.set_defaults(run=lambda a: gpt.bench_gpt(a.n_layers, _ints(a.batches, "--batches"), a.prompt_len, a.new_tokens,
                                               a.train_batch, a.train_len, a.rounds, a.train_rounds, a.device,
                                               a.precision, a.compile, a.peak_tflops))


    q = _parser(bsub, "quantize", "quantized models: our schemes vs torch.ao and onnxruntime (quality, speed, size)",
                quantize.__doc__)
    q.add_argument("--task", default="classify", choices=quantize.TASKS)
    q.add_argument("--model", default=None, help="classify: a fine-tuned BERT folder (default: fine-tune MiniLM first); "
                                                 "embed: a BERT folder (default MiniLM); translate: our run (required)")
    q.add_argument("--data", default=None, help="the SST-2 folder (default: $TRANSFORMER_LAB_DATA/sst2)")
    q.add_argument("--src", default=None, help="translate: the test sources")
    q.add_argument("--ref", default=None, help="translate: the test references")
    q.add_argument("--calib-data", default=None, help="translate: source-language calibration text")
    q.add_argument("--variants", default=",".join(quantize.DEFAULT_VARIANTS),
                   help="comma-separated, of " + ",".join(quantize.VARIANTS))
    q.add_argument("--peers", default=",".join(quantize.PEERS), help="comma-separated, of " + ",".join(quantize.PEERS))
    q.add_argument("--batch", type=positive_int, default=8)
    q.add_argument("--length", type=positive_int, default=128)
    q.add_argument("--steps", type=positive_int, default=3, help="timed calls per round")
    q.add_argument("--rounds", type=positive_int, default=5)
    q.add_argument("--calib-samples", type=positive_int, default=256)
    q.add_argument("--limit", type=positive_int, default=None, help="evaluate on the first N sentences only")
    q.add_argument("--finetune-steps", type=positive_int, default=300)
    q.add_argument("--beam", type=positive_int, default=4, help="translate: beam size for BLEU")
    q.add_argument("--compile", action="store_true", help="BERT tasks: fp32 and each variant also under torch.compile")
    add_threads(q)  # (onnxruntime's sessions take as many)
    q.set_defaults(run=_quantize)

    at = _parser(bsub, "attention", "long-sequence attention: time and peak memory vs n (full, chunked, window, "
                                    "block-sparse, Longformer)", attention.__doc__)
    at.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="comma-separated sequence lengths")
    at.add_argument("--impls", default=",".join(attention.IMPLS), help="comma-separated, of " + ",".join(attention.IMPLS))
    at.add_argument("--heads", type=positive_int, default=8)
    at.add_argument("--d-head", type=positive_int, default=64)
    at.add_argument("--window", type=positive_int, default=256, help="keys on each side (causal: before)")
    at.add_argument("--block", type=positive_int, default=64, help="block-sparse block size")
    at.add_argument("--chunk", type=positive_int, default=1024, help="chunked: queries per chunk")
    at.add_argument("--causal", action="store_true", help="causal self-attention (decoder)")
    at.add_argument("--rounds", type=positive_int, default=3)
    at.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    at.add_argument("--max-dense-gib", type=float, default=6.0, help="skip the dense reference past this score size")
    at.set_defaults(run=_attention)

    dd = _parser(bsub, "ddp", "one training command in 1 process and in N under torchrun: tokens/s and ratio",
                 ddp.__doc__)
    dd.add_argument("--nproc", type=positive_int, default=2, help="processes under torchrun")
    dd.add_argument("--steps", type=positive_int, default=40, help="training steps of each run")
    dd.add_argument("--log-every", type=positive_int, default=5, help="steps per timed window (the first is dropped)")
    dd.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train's arguments")
    dd.set_defaults(run=_ddp)

    pf = _parser(bsub, "peft", "SST-2 fine-tuning: full, LoRA, QLoRA, prefix, prompt; ours vs peft", peft.__doc__)
    pf.add_argument("--model", default=None, help="an HF BERT folder (default: all-MiniLM-L6-v2)")
    pf.add_argument("--data", default=None, help="the SST-2 folder (default: $TRANSFORMER_LAB_DATA/sst2)")
    pf.add_argument("--methods", default=",".join(peft.METHODS), help="comma-separated, of " + ",".join(peft.METHODS))
    pf.add_argument("--train-sentences", type=positive_int, default=6400, help="a seeded sample of train.tsv")
    pf.add_argument("--steps", type=positive_int, default=200)
    pf.add_argument("--batch", type=positive_int, default=32)
    pf.add_argument("--max-len", type=positive_int, default=64, help="tokens per sentence, [CLS]/[SEP] included")
    pf.add_argument("--seed", type=seed, default=0, help="the sample and the initialisation")
    pf.add_argument("--threads", type=non_negative_int, default=0, help="torch threads per run (0: torch's choice)")
    pf.add_argument("--no-peer", action="store_true", help="ours only")
    pf.add_argument("--markdown", action="store_true", help="print the README's table")
    pf.set_defaults(run=_peft)


def _ddp(a: argparse.Namespace) -> BenchResult:
    args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    with tqdm(total=2, desc="bench ddp", unit="run", disable=None) as bar:
        return ddp.bench_ddp(args, a.nproc, a.steps, a.log_every, on_run=lambda s: (bar.set_postfix_str(s), bar.update(1)))


def _attention(a: argparse.Namespace) -> BenchResult:
    lengths = _ints(a.lengths, "--lengths")
    impls = tuple(x.strip() for x in a.impls.split(",") if x.strip())
    with tqdm(desc="bench attention", unit="run", disable=None) as bar:
        return attention.bench_attention(lengths, impls, a.heads, a.d_head, a.window, a.block, a.chunk, a.causal,
                                         a.rounds, a.threads, a.max_dense_gib,
                                         on_run=lambda s: (bar.set_postfix_str(s), bar.update(1)))


def _peft(a: argparse.Namespace) -> BenchResult:
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    total = len(methods) * (1 if a.no_peer else 2)
    with tqdm(total=total, desc="bench peft", unit="run", disable=None) as bar:
        res = peft.bench_peft(a.model, a.data, methods, a.train_sentences, a.steps, a.batch, a.max_len, a.seed,
                              not a.no_peer, a.threads, on_run=lambda r: bar.update(1))
    if a.markdown:
        res.notes.append(peft.format_table(res.result))
    return res


def _quantize(a: argparse.Namespace) -> BenchResult:
    def names(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    with tqdm(desc="bench quantize", unit="stage", disable=None) as bar:
        return quantize.bench_quantize(a.task, a.model, a.data, names(a.variants), names(a.peers), a.batch, a.length,
                                       a.steps, a.rounds, a.calib_samples, a.limit, a.finetune_steps, a.src, a.ref,
                                       a.calib_data, a.beam, a.compile, on_step=lambda s: (bar.set_postfix_str(s), bar.update(1)))


def _parser(bsub: argparse._SubParsersAction, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    p = bsub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object (ours, peer, ratio, ...)")
    p.set_defaults(func=_run)
    return p


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag}: expected integers >= 1, got {text!r}")
    return values


FEW_ROUNDS = 3  # below this, one slow round (a page fault, another process) moves the ratio by several times


def _run(args: argparse.Namespace) -> int:
    few = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
           if k in ("rounds", "train_rounds") and v < FEW_ROUNDS]
    if few:
        log.warning("%s: fewer than %d rounds per side; the medians, and the ratio, are noisy (on this project's "
                    "2-core machine a review saw 0.03-26x from a 1-round bench whose 3-round figure was about 1x)",
                    ", ".join(few), FEW_ROUNDS)
    res: BenchResult = args.run(args)
    print(json.dumps(res.result) if args.json else res.table())
    return 0
