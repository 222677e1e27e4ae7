"""`crosslayer export`: a backbone's layer pair as an ONNX model, in the shared cache."""

from __future__ import annotations

from crosslayer.commands.options import add_command, add_network_options, bounded_int

EXAMPLES = """\
  crosslayer export                                   # mobilenet_v2, its default pair
  crosslayer export --backbone vgg16 --weights vgg16.pth --logits
  crosslayer export --layers features.16 features.17 --force
"""


def run(args) -> int:
    from crosslayer.backbones.export import export

    path = export(args.backbone, args.layers, args.weights, with_embedding=True, with_logits=args.logits,
                  opset=args.opset, force=args.force)
    print(path)
    return 0


def register(commands) -> None:
    parser = add_command(commands, "export", run, "export a backbone's layer pair to ONNX (cached under "
                         "$CROSSLAYER_CACHE, default ~/.cache/crosslayer)", EXAMPLES)
    add_network_options(parser)
    parser.add_argument("--logits", action="store_true", help="also output the ImageNet logits")
    parser.add_argument("--opset", type=bounded_int(7), default=17, help="ONNX opset version")
    parser.add_argument("--force", action="store_true", help="export again even if cached")
