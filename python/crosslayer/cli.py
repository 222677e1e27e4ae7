"""The `crosslayer` command line. Each subcommand lives in its own function; `main` only dispatches."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _cmd_info(args) -> int:
    """Build info; with a path, what a store directory, an image index or an encoder file holds."""
    import json

    import crosslayer

    if args.path is None:
        for key, value in crosslayer.build_info().items():
            print(f"{key:>20}: {value}")
        return 0
    from pathlib import Path

    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.extract import Store
    from crosslayer.retrieval.image_index import ImageIndex

    path = Path(args.path)
    if not path.exists():
        print(f"crosslayer info: {path} does not exist", file=sys.stderr)
        return 2
    try:
        if not path.is_dir():
            summary = CrossLayerEncoder.read_meta(path)
        elif ImageIndex.exists(path) or ImageIndex.interrupted_creation(path):
            with ImageIndex.open(path, "r") as index:
                summary = index.summary()
        else:
            summary = Store(path).summary()
    except ValueError as error:  # StoreError, EncoderFormatError, ImageIndexError, CodeIndexError
        print(f"crosslayer info: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_export(args) -> int:
    from crosslayer.backbones.export import export

    path = export(args.backbone, args.layers, args.weights, with_embedding=True, with_logits=args.logits,
                  opset=args.opset, force=args.force)
    print(path)
    return 0


def _encoder_from_args(args):
    from crosslayer.encoder import CrossLayerEncoder

    if args.encoder:
        return CrossLayerEncoder.load(args.encoder, batch_size=args.batch_size, threads=args.threads,
                                      decode_workers=args.decode_workers)
    return CrossLayerEncoder(args.backbone, args.layers, args.side, args.pca_dim, args.policy, args.weights,
                             batch_size=args.batch_size, threads=args.threads, decode_workers=args.decode_workers,
                             fit_images=args.fit_images)


def _cmd_extract(args) -> int:
    from pathlib import Path

    from crosslayer.extract import StoreError, extract, list_images, read_manifest

    source = Path(args.source)
    if not source.exists():
        print(f"crosslayer extract: {source} does not exist (expected an image folder or a CSV manifest)",
              file=sys.stderr)
        return 2
    sources = list_images(source) if source.is_dir() else read_manifest(source)
    if not sources:
        print(f"crosslayer extract: no images found in {source}", file=sys.stderr)
        return 2
    store = Path(args.store)
    # an existing store resumes only with the encoder it was made with (StoreError naming the differences), run
    # with this command's batch size, threads and decode workers
    encoder = _encoder_from_args(args)
    try:
        report = extract(sources, store, encoder, chunk_size=args.chunk_size, save_embedding=not args.no_embedding,
                         on_error=args.on_error, progress=not args.quiet)
    except StoreError as error:
        print(f"crosslayer extract: {error}", file=sys.stderr)
        return 2
    rate = report.done / report.seconds if report.seconds else 0.0
    print(f"encoded {report.done} images ({rate:.1f} images/s), {report.skipped} already in {store}, "
          f"{len(report.failed)} failed")
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}")
    return 0


def _channel_ids_argument(text) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--channel-ids: expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise ValueError(f"--channel-ids: expected at least one channel id, got {text!r}")
    return ids


def _heatmap_encoder(args):
    """The encoder whose network the heatmap shows: an index's or an encoder file's, or one from the options."""
    from crosslayer.backbones.registry import DEFAULT_BACKBONE
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.image_index import ImageIndex

    network = {"--backbone": args.backbone, "--layers": args.layers, "--side": args.side, "--policy": args.policy}
    given = [flag for flag, value in network.items() if value is not None]
    source = "--index" if args.index else "--encoder" if args.encoder else None
    if source and given:
        raise ValueError(f"{', '.join(given)}: the network and its input size come from {source}; give one or the other")
    runtime = {"threads": args.threads, "batch_size": 1}
    if args.weights is not None:
        runtime["weights"] = args.weights  # a moved weights file, checked against the one recorded
    if args.index:
        with ImageIndex.open(args.index, "r", **runtime) as index:
            return index.encoder
    if args.encoder:
        return CrossLayerEncoder.load(args.encoder, **runtime)
    # no PCA is needed: the heatmaps show the guidance layer, and the channel means do not depend on the PCA
    return CrossLayerEncoder(args.backbone or DEFAULT_BACKBONE, args.layers, 448 if args.side is None else args.side,
                             policy=args.policy or "square", weights=args.weights, batch_size=1, threads=args.threads)


def _cmd_heatmap(args) -> int:
    """Heatmaps of one image's strongest guidance channels (those a search with it as the query compares)."""
    from crosslayer.heatmap import (DEFAULT_CHANNELS, check_channel_choice, check_heatmap_path, choose_channels,
                                    guidance_maps, render_heatmaps)

    # every argument is checked before the backbone runs
    check_heatmap_path(args.out)
    channel_ids = None if args.channel_ids is None else _channel_ids_argument(args.channel_ids)
    channels = DEFAULT_CHANNELS if args.channels is None else args.channels
    encoder = _heatmap_encoder(args)
    check_channel_choice(encoder.Dk, channels, channel_ids)
    maps = guidance_maps(encoder, args.image)
    shown = choose_channels(maps.channel_mean, channels, channel_ids)
    width, height = render_heatmaps(maps, shown, args.out)
    listed = ", ".join(f"{c} ({maps.channel_mean[c]:.3g})" for c in shown)
    print(f"{encoder.backbone} {encoder.layers[1]} channels (mean activation): {listed}")
    print(f"heatmaps: {args.out} ({width}x{height})", file=sys.stderr)
    return 0


def demo_photos():
    """(name, HxWx3 uint8) photos shipped with installed packages, plus a crop of the cat as a near-duplicate."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [(name, getattr(data, name)()) for name in ("chelsea", "astronaut", "coffee", "rocket")]
    samples = load_sample_images()
    photos += [(name.rsplit(".", 1)[0], image) for name, image in zip(samples.filenames, samples.images)]
    chelsea = photos[0][1]
    height, width = chelsea.shape[:2]
    photos.append(("chelsea cropped", chelsea[height // 8 :, width // 8 :].copy()))
    return [(name.rsplit("/", 1)[-1], image) for name, image in photos]


def random_crops(images, per_image: int, seed: int = 0):
    """Seeded random crops (30-60% of each side, half of them mirrored): a varied set to learn the PCA on.

    Fitting the PCA on the very photos being compared (7 here) makes its low-variance components separate the most
    similar photos, and sign codes weigh every component alike; a varied fitting set avoids that."""
    rng = np.random.default_rng(seed)
    crops = []
    for image in images:
        height, width = image.shape[:2]
        for _ in range(per_image):
            scale = rng.uniform(0.3, 0.6)
            crop_h, crop_w = int(height * scale), int(width * scale)
            top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
            crop = image[top : top + crop_h, left : left + crop_w]
            crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


def nearest_neighbours(codes, channels: int) -> list[tuple[int, int]]:
    """For each code, (the most similar other code, its score): masked popcount similarity on the query's `channels`
    guidance channels of largest mean activation, by the search engine (`crosslayer.search`); ties go to the
    smaller index."""
    from crosslayer.search import search

    if len(codes) < 2:
        raise ValueError(f"codes: need at least two codes to find neighbours, got {len(codes)}")
    scores, ids = search(codes, codes, k=2, channels=channels)
    neighbours = []
    for query, (row_scores, row_ids) in enumerate(zip(scores, ids)):
        # a code scores at least as high with itself as with any other, so the best other one is in the top two
        column = 1 if row_ids[0] == query else 0
        neighbours.append((int(row_ids[column]), int(row_scores[column])))
    return neighbours


def _imagenet_names():
    from importlib import resources

    text = resources.files("crosslayer.data").joinpath("imagenet_classes.txt").read_text()
    return [line for line in text.splitlines() if not line.startswith("#")]


def _cmd_demo(args) -> int:
    """A pretrained MobileNetV2 on photos from installed packages: classes, code sizes, nearest neighbours."""
    import time

    from crosslayer.encoder import CrossLayerEncoder

    photos = demo_photos()
    names = [name for name, _ in photos]
    images = [image for _, image in photos]
    encoder = CrossLayerEncoder(args.backbone, side=args.side, threads=args.threads, logits=True, batch_size=8)
    start = time.perf_counter()
    encoder.fit(random_crops(images[:-1], args.fit_crops))
    classes = _imagenet_names()
    print(f"backbone {encoder.backbone}, layers {encoder.layers[0]} (Dt={encoder.Dt}) x {encoder.layers[1]} "
          f"(Dk={encoder.Dk}), images resized to {encoder.side}x{encoder.side}")
    print(f"PCA learnt on {args.fit_crops} random crops of each photo")
    print("\ntop ImageNet classes (softmax probability):")
    parts = []
    for batch in encoder.activations(images):
        logits = batch.outputs["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for row, position in enumerate(batch.positions):
            top = np.argsort(-probs[row])[:3]
            shown = ", ".join(f"{classes[c]} {probs[row, c]:.2f}" for c in top)
            print(f"  {names[position]:>26}: {shown}")
        parts.append(encoder.pool_batch(batch.outputs, "codes"))
    from crosslayer.codes import Codes

    codes = Codes.concatenate(parts)
    elapsed = time.perf_counter() - start
    float_bytes = encoder.Dk * encoder.Dt * 4
    code_bytes = codes.nbytes / len(codes)
    print(f"\nper image: float representation {float_bytes / 1e6:.2f} MB, sign code {code_bytes / 1e3:.1f} kB "
          f"({float_bytes / code_bytes:.1f}x smaller); {len(codes)} photos (and the PCA) in {elapsed:.1f} s")
    print(f"\nnearest neighbour by popcount similarity on the top {args.channels} guidance channels:")
    for query, (best, score) in enumerate(nearest_neighbours(codes, args.channels)):
        print(f"  {names[query]:>26} -> {names[best]} (score {score})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslayer", description="Cross-convolutional-layer pooling.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="build info, or what a store directory / image index / encoder file holds")
    info.add_argument("path", nargs="?", default=None, help="a store directory, an image index directory or an encoder file")
    info.set_defaults(func=_cmd_info)

    from crosslayer.backbones.registry import BACKBONES, DEFAULT_BACKBONE
    from crosslayer.images import RESIZE_POLICIES

    def backbone_options(p):
        p.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(BACKBONES))
        p.add_argument("--layers", nargs=2, default=None, metavar=("LAYER_T", "LAYER_T1"),
                       help="tap names of the layer pair (default: the backbone's)")
        p.add_argument("--weights", default=None, help="state-dict file (.pth); default: the pinned packaged weights")

    export = sub.add_parser("export", help="export a backbone's layer pair to ONNX (cached)")
    backbone_options(export)
    export.add_argument("--logits", action="store_true", help="also output ImageNet logits")
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--force", action="store_true", help="export again even if cached")
    export.set_defaults(func=_cmd_export)

    extract = sub.add_parser("extract", help="encode a folder or a manifest CSV (path,...) into a resumable store")
    extract.add_argument("source", help="an image folder, or a CSV whose first column is 'path'")
    extract.add_argument("store", help="the store directory (created, or resumed)")
    backbone_options(extract)
    extract.add_argument("--encoder", default=None, help="a fitted encoder file to use instead of fitting one")
    extract.add_argument("--side", type=int, default=448)
    extract.add_argument("--policy", default="square", choices=RESIZE_POLICIES)
    extract.add_argument("--pca-dim", type=int, default=None)
    extract.add_argument("--fit-images", type=int, default=256, help="images sampled to learn the PCA")
    extract.add_argument("--batch-size", type=int, default=16)
    extract.add_argument("--threads", type=int, default=0, help="onnxruntime/pooling threads (0: all cores)")
    extract.add_argument("--decode-workers", type=int, default=2)
    extract.add_argument("--chunk-size", type=int, default=128, help="images per committed chunk file")
    extract.add_argument("--no-embedding", action="store_true", help="do not store the pooled embeddings")
    extract.add_argument("--on-error", default="skip", choices=("skip", "raise"), help="bad images: record and go on, or stop")
    extract.add_argument("--quiet", action="store_true")
    extract.set_defaults(func=_cmd_extract)

    heatmap = sub.add_parser("heatmap", help="where one image's strongest guidance channels fire, as a PNG")
    heatmap.add_argument("image", help="an image file")
    heatmap.add_argument("--out", required=True, help="the PNG to write")
    which = heatmap.add_mutually_exclusive_group()
    which.add_argument("--channels", type=int, default=None,
                       help="show the N channels of largest mean activation, those a search with this image as the "
                            "query compares with --channels N (default 6)")
    which.add_argument("--channel-ids", default=None, help="show these channels instead: comma-separated ids")
    network = heatmap.add_mutually_exclusive_group()
    network.add_argument("--index", default=None, help="an image index: use the network and input size it was built with")
    network.add_argument("--encoder", default=None, help="an encoder file: use its network and input size")
    heatmap.add_argument("--backbone", default=None, choices=sorted(BACKBONES), help=f"default {DEFAULT_BACKBONE}")
    heatmap.add_argument("--layers", nargs=2, default=None, metavar=("LAYER_T", "LAYER_T1"),
                         help="tap names of the layer pair (default: the backbone's)")
    heatmap.add_argument("--side", type=int, default=None, help="input side in pixels (default 448)")
    heatmap.add_argument("--policy", default=None, choices=RESIZE_POLICIES, help="resize policy (default square)")
    heatmap.add_argument("--weights", default=None, help="state-dict file (.pth), or 'random' (untrained; tests only)")
    heatmap.add_argument("--threads", type=int, default=0, help="0: all cores")
    heatmap.set_defaults(func=_cmd_heatmap)

    demo = sub.add_parser("demo", help="pretrained backbone on bundled photos: classes, code sizes, neighbours")
    demo.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(n for n, s in BACKBONES.items() if s.weights.package))
    demo.add_argument("--side", type=int, default=448)
    demo.add_argument("--channels", type=int, default=64, help="guidance channels kept per query")
    demo.add_argument("--threads", type=int, default=0)
    demo.add_argument("--fit-crops", type=int, default=6, help="random crops per photo to learn the PCA on")
    demo.set_defaults(func=_cmd_demo)
    evaluation = sub.add_parser("eval", help="evaluations: classification accuracy, retrieval mAP")
    eval_sub = evaluation.add_subparsers(dest="eval_command", required=True)
    from crosslayer.eval.cli import add_classify_parser
    from crosslayer.retrieval.cli import register as register_retrieval

    add_classify_parser(eval_sub)
    register_retrieval(sub, eval_sub)
    return parser


def _raised_by_an_argument_check(error: BaseException) -> bool:
    """Whether `error` comes from a `raise` statement in crosslayer's own code (its checks name the argument and
    what was expected), not from an operation failing inside it: that is a bug, and its traceback must be seen."""
    import dis

    innermost = error.__traceback__
    if innermost is None:
        return False
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    module = innermost.tb_frame.f_globals.get("__name__", "")
    if module != "crosslayer" and not module.startswith("crosslayer."):
        return False
    return any(instruction.offset == innermost.tb_lasti and instruction.opname == "RAISE_VARARGS"
               for instruction in dis.get_instructions(innermost.tb_frame.f_code))


def main(argv=None) -> int:
    from crosslayer.backbones.weights import WeightsError

    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(message):
        parser.exit(2, f"crosslayer {args.command}: error: {message}\n")

    # bad input (arguments, files, index mismatch, missing weights) gets one clear line, not a traceback
    try:
        return args.func(args)
    except (ValueError, WeightsError) as error:
        fail(error)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as error:
        if error.filename is None:
            raise
        fail(f"{error.strerror}: {error.filename}")
    except TypeError as error:
        if not _raised_by_an_argument_check(error):
            raise
        fail(error)


if __name__ == "__main__":
    sys.exit(main())
