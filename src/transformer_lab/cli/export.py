"""`transformer-lab export onnx`: ONNX graphs of a model for onnxruntime (or any ONNX runtime).

    transformer-lab export onnx --checkpoint runs/m30k --out m30k-onnx          # encoder.onnx + decoder.onnx
    transformer-lab export onnx --checkpoint $MINILM --out minilm-onnx --int8

Each export is run once with onnxruntime against PyTorch on random inputs (and, for decoders, a
cached second step) and kept only when every output agrees within 1e-4. --int8 adds onnxruntime's
dynamic INT8 version of each graph (NAME.int8.onnx).
"""

from __future__ import annotations

import argparse
import json

from transformer_lab.cli.args import positive_int
from transformer_lab.tasks import export


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model for deployment (onnx)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = psub.add_parser("onnx", help="ONNX graphs (translation: encoder + decoder step with KV cache)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_argument("--checkpoint", required=True, help="our run or checkpoint folder, or a Hugging Face BERT / GPT-2 folder")
    o.add_argument("--out", required=True, help="folder for the .onnx files, the tokenizer and export.json")
    o.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (14-20)")
    o.add_argument("--int8", action="store_true", help="also write onnxruntime's dynamic INT8 graphs")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    o.add_argument("--json", action="store_true", help="print one JSON object (the summary export.json holds)")
    o.set_defaults(func=onnx_cmd)


def onnx_cmd(args: argparse.Namespace) -> int:
    summary = export.run(export.ExportConfig(args.checkpoint, args.out, args.opset, args.int8, args.overwrite))
    if args.json:  # (with the folder written, as the other commands' JSON names theirs)
        print(json.dumps({**summary, "out": str(args.out)}))
        return 0
    for name, size in summary["bytes"].items():
        print(f"{args.out}/{name}: {size / 2**20:.1f} MiB")
    print(f"onnxruntime vs PyTorch: largest difference {summary['max_abs_difference']:.1e}")
    return 0
