"""`transformer-lab quantize`: an fp32 model into an INT8 (or INT4) checkpoint.

    transformer-lab quantize --checkpoint runs/m30k --out runs/m30k-int8
    transformer-lab quantize --checkpoint $MINILM --out minilm-int8 --scheme static --calibrate kl \\
        --calib-data sentences.txt
    transformer-lab quantize --checkpoint runs/gpt --out runs/gpt-w4 --scheme weight-only --bits 4 --granularity group

Schemes: dynamic (int8 weights per output channel, activations quantized per token at run time: no
calibration needed), static (activation grids fixed from --calib-data with an observer: minmax,
percentile, mse or kl), weight-only (int8 or int4 weights, fp32 activations: smaller, not faster).
--smooth ALPHA applies SmoothQuant (needs --calib-data; with --activations tensor, 0.8 keeps a BERT
within 0.5 points of fp32 on SST-2). The output loads in translate, evaluate,
generate, embed and similarity like the fp32 model.
"""

from __future__ import annotations

import argparse
import json

from transformer_lab.cli.args import positive_float, positive_int, refuse_unused
from transformer_lab.compression import OBSERVERS, QuantConfig
from transformer_lab.compression.linear import GRANULARITIES, SCHEMES
from transformer_lab.compression.model import WEIGHT_OBSERVERS
from transformer_lab.tasks import quantize


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a model to INT8 / INT4 (dynamic, static or weight-only)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="the fp32 model: one of our run or checkpoint folders, or a Hugging Face BERT / GPT-2 folder")
    p.add_argument("--out", required=True, help="the quantized checkpoint folder to write")
    p.add_argument("--scheme", default="dynamic", choices=SCHEMES)
    p.add_argument("--bits", type=int, default=8, choices=(8, 4), help="weight bits (activations: 8)")
    p.add_argument("--granularity", default="channel", choices=GRANULARITIES,
                   help="one weight scale per tensor, per output channel, or per group of --group-size inputs "
                        "(weight-only)")
    p.add_argument("--group-size", type=positive_int, default=None, help="with --granularity group (default 32)")
    p.add_argument("--calibrate", default=None, choices=sorted(OBSERVERS),
                   help="the static scheme's activation range: min-max, percentile (99.99), MSE-optimal, KL (entropy)")
    p.add_argument("--weight-calibrate", default="minmax", choices=sorted(WEIGHT_OBSERVERS),
                   help="each output channel's weight range (kl is for activations: --calibrate)")
    p.add_argument("--smooth", type=positive_float, default=None, metavar="ALPHA",
                   help="SmoothQuant: move activation outliers into the weights with strength ALPHA (0.5 typical)")
    p.add_argument("--activations", default=None, choices=("token", "tensor"),
                   help="dynamic scheme: a grid per token (default), or one per call (fbgemm's kernel: faster decoding)")
    p.add_argument("--tied", action="store_true",
                   help="also quantize an output layer tied to the embedding table (an int8 copy; the table stays fp32)")
    p.add_argument("--embeddings", action="store_true",
                   help="also store embedding tables in int8, one scale per row (those not tied to an output layer)")
    p.add_argument("--skip", default="", help="comma-separated modules to keep in fp32, by name or the end of one (w_q: "
                                              "every layer's; ffn; encoder.layers.0); a name that matches none is an error")
    p.add_argument("--calib-data", default=None, metavar="FILE",
                   help="calibration text, one sample per line (plain or .gz), like the model's inputs")
    p.add_argument("--calib-samples", type=positive_int, default=256, metavar="N", help="lines of FILE used")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--any-text", action="store_true",
                   help="skip the check that the calibration text is in the model's input language")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=quantize_cmd)


def quantize_cmd(args: argparse.Namespace) -> int:
    # an option this quantization would not read is refused (they were ignored, and config.json recorded them)
    if args.granularity != "group":
        refuse_unused(f"--granularity {args.granularity} (groups are --granularity group's)", group_size=args.group_size)
    if args.scheme != "static":
        refuse_unused(f"--scheme {args.scheme}: it calibrates no activation range (--scheme static does)",
                      calibrate=args.calibrate)
    if args.scheme != "dynamic":
        refuse_unused(f"--scheme {args.scheme}: it is the dynamic scheme's choice of activation grid",
                      activations=args.activations)
    given = {k: v for k, v in (("group_size", args.group_size), ("calibrate", args.calibrate),
                               ("activations", args.activations)) if v is not None}
    qcfg = QuantConfig(scheme=args.scheme, bits=args.bits, granularity=args.granularity,
                       weight_calibrate=args.weight_calibrate, smooth=args.smooth, skip=args.skip,
                       embeddings=args.embeddings, tied=args.tied, **given)
    summary = quantize.run(quantize.QuantizeConfig(
        args.checkpoint, args.out, qcfg, args.calib_data, args.calib_samples, args.batch_size, args.overwrite,
        args.any_text))
    if args.json:  # (with the folder written, as the other commands' JSON names theirs)
        print(json.dumps({**summary, "out": str(args.out)}))
        return 0
    b = summary["linear_weight_bytes"]
    print(f"{summary['model_type']}: {summary['layers_quantized']} Linear layers -> {args.scheme} {args.bits}-bit "
          f"({args.granularity}); Linear weights {b['fp32'] / 2**20:.1f} MiB -> {b['quantized'] / 2**20:.1f} MiB "
          f"({summary['linear_weights_smaller']}x smaller)")
    f = summary["file_bytes"]
    if f["fp32"]:
        print(f"model.safetensors: {f['fp32'] / 2**20:.1f} MiB -> {f['quantized'] / 2**20:.1f} MiB")
    if "agreement_with_fp32" in summary:
        print(f"agreement with fp32 on {summary['agreement_lines']} lines of the calibration text: "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary["agreement_with_fp32"].items()))
    print(f"wrote {args.out}")
    return 0
