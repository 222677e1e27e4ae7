"""`crosslayer heatmap IMAGE --out PNG`: where one image's strongest guidance channels fire."""

from __future__ import annotations

import sys

from crosslayer.commands.options import (add_command, add_input_options, add_network_options, add_threads_option,
                                         bounded_int, check_side, comma_ints)
from crosslayer.config import ENCODER_DEFAULTS
from crosslayer.errors import UsageError

EXAMPLES = """\
  crosslayer heatmap bird.jpg --out heat.png                  # its 6 strongest channels
  crosslayer heatmap bird.jpg --out heat.png --channel-ids 3,17
  crosslayer heatmap bird.jpg --out heat.png --index db       # the network and input size db was built with
"""


def _encoder(args):
    """The encoder whose network the heatmap shows: an index's or an encoder file's, or one from the options."""
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.image_index import ImageIndex

    network = {"--backbone": args.backbone, "--layers": args.layers, "--side": args.side, "--policy": args.policy}
    given = [flag for flag, value in network.items() if value is not None]
    source = "--index" if args.index else "--encoder" if args.encoder else None
    if source and given:
        raise UsageError(f"{', '.join(given)}: the network and its input size come from {source}; give one or the other")
    runtime = {"threads": args.threads, "batch_size": 1}
    if args.weights is not None:
        runtime["weights"] = args.weights  # a moved weights file, checked against the one recorded
    if args.index:
        with ImageIndex.open(args.index, "r", **runtime) as index:
            return index.encoder
    if args.encoder:
        return CrossLayerEncoder.load(args.encoder, **runtime)
    backbone = args.backbone or ENCODER_DEFAULTS.backbone
    side = ENCODER_DEFAULTS.side if args.side is None else args.side
    check_side(backbone, side)
    # no PCA is needed: the heatmaps show the guidance layer, and the channel means do not depend on the PCA
    return CrossLayerEncoder(backbone, args.layers, side, policy=args.policy or ENCODER_DEFAULTS.policy,
                             weights=args.weights, batch_size=1, threads=args.threads)


def run(args) -> int:
    from pathlib import Path

    from crosslayer.heatmap import (DEFAULT_CHANNELS, check_channel_choice, check_heatmap_path, choose_channels,
                                    guidance_maps, render_heatmaps)

    # every argument is checked before the backbone runs
    check_heatmap_path(args.out)
    if not Path(args.image).is_file():
        raise UsageError(f"IMAGE: no such file: {args.image}")
    channels = DEFAULT_CHANNELS if args.channels is None else args.channels
    encoder = _encoder(args)
    check_channel_choice(encoder.Dk, channels, args.channel_ids)
    maps = guidance_maps(encoder, args.image)
    shown = choose_channels(maps.channel_mean, channels, args.channel_ids)
    width, height = render_heatmaps(maps, shown, args.out)
    listed = ", ".join(f"{c} ({maps.channel_mean[c]:.3g})" for c in shown)
    print(f"{encoder.backbone} {encoder.layers[1]} channels (mean activation): {listed}")
    print(f"heatmaps: {args.out} ({width}x{height})", file=sys.stderr)
    return 0


def register(commands) -> None:
    from crosslayer.heatmap import DEFAULT_CHANNELS

    parser = add_command(commands, "heatmap", run, "where one image's strongest guidance channels fire, as a PNG",
                         EXAMPLES)
    parser.add_argument("image", metavar="IMAGE", help="an image file")
    parser.add_argument("--out", required=True, help="the PNG to write")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--channels", type=bounded_int(1), default=None,
                       help="show the N channels of largest mean activation, those a search with this image as the "
                            f"query compares with --channels N (default: {DEFAULT_CHANNELS})")
    which.add_argument("--channel-ids", type=comma_ints, default=None,
                       help="show these channels instead: comma-separated ids (default: none)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--index", default=None,
                        help="an image index: use the network and input size it was built with (default: none)")
    source.add_argument("--encoder", default=None,
                        help="an encoder file: use its network and input size (default: none)")
    add_network_options(parser, defaults=False)
    add_input_options(parser, defaults=False)
    add_threads_option(parser)
