"""`crosslayer export`: a backbone's layer pair as an ONNX model in the shared cache, or (`--encoder`) a fitted
encoder as one ONNX model from pixels to sign codes."""

from __future__ import annotations

from crosslayer.commands.options import add_command, add_network_options, bounded_int
from crosslayer.errors import UsageError

EXAMPLES = """\
  crosslayer export                                   # mobilenet_v2, its default pair
  crosslayer export --backbone vgg16 --weights vgg16.pth --logits
  crosslayer export --layers features.16 features.17 --force
  crosslayer export --encoder db/encoder.xle --out encoder.onnx --ops standard --embedding
"""


def run(args) -> int:
    from crosslayer.backbones.export import export

    if args.encoder is not None:
        return _export_encoder(args)
    if args.out is not None or args.embedding:
        raise UsageError("--out/--embedding: export a fitted encoder; give --encoder ENC.xle too")
    path = export(args.backbone, args.layers, args.weights, with_embedding=True, with_logits=args.logits,
                  opset=args.opset, force=args.force)
    print(path)
    return 0


def _export_encoder(args) -> int:
    from crosslayer.onnx_encoder import export_encoder_onnx

    if args.out is None:
        raise UsageError("--out: where to write the encoder's ONNX model (e.g. encoder.onnx)")
    if args.logits or args.force:
        raise UsageError("--logits/--force: options of a backbone export, not of --encoder")
    print(export_encoder_onnx(args.encoder, args.out, ops=args.ops, embedding=args.embedding))
    return 0


def register(commands) -> None:
    from crosslayer.onnx_encoder import OPS

    parser = add_command(commands, "export", run, "export a backbone's layer pair to ONNX (cached under "
                         "$CROSSLAYER_CACHE, default ~/.cache/crosslayer), or a fitted encoder (--encoder) to "
                         "one ONNX model: pixels in, sign codes out", EXAMPLES)
    add_network_options(parser)
    parser.add_argument("--logits", action="store_true", help="also output the ImageNet logits")
    parser.add_argument("--opset", type=bounded_int(7), default=17, help="ONNX opset version")
    parser.add_argument("--force", action="store_true", help="export again even if cached")
    parser.add_argument("--encoder", default=None, metavar="ENC.xle",
                        help="a fitted encoder file: export it (pixels -> bits, channel_mean) instead of a backbone")
    parser.add_argument("--out", default=None, help="with --encoder: the .onnx file to write")
    parser.add_argument("--ops", choices=OPS, default="standard",
                        help="with --encoder: standard operators only, or one ai.crosslayer PoolCodes node "
                             "(needs crosslayer.ort_ops_library() registered in the runtime)")
    parser.add_argument("--embedding", action="store_true", help="with --encoder: also output the global embedding")
