"""`crosslayer demo`: a pretrained backbone on photos shipped with installed packages: classes, code sizes and
nearest neighbours (the README's first command)."""

from __future__ import annotations

import numpy as np

from crosslayer.commands.options import add_command, add_threads_option, bounded_int, check_side
from crosslayer.config import ENCODER_DEFAULTS
from crosslayer.errors import UsageError

EXAMPLES = """\
  crosslayer demo
  crosslayer demo --backbone efficientnet_lite0 --side 224 --channels 32
"""


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
        raise UsageError(f"codes: need at least two codes to find neighbours, got {len(codes)}")
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


def run(args) -> int:
    """A pretrained MobileNetV2 on photos from installed packages: classes, code sizes, nearest neighbours."""
    import time

    from crosslayer.encoder import CrossLayerEncoder

    photos = demo_photos()
    names = [name for name, _ in photos]
    images = [image for _, image in photos]
    check_side(args.backbone, args.side)
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


def register(commands) -> None:
    from crosslayer.backbones.registry import BACKBONES
    from crosslayer.config import MAX_SIDE, MIN_SIDE

    pretrained = sorted(name for name, spec in BACKBONES.items() if spec.weights.package)
    parser = add_command(commands, "demo", run, "a pretrained backbone on bundled photos: classes, code sizes, "
                         "nearest neighbours", EXAMPLES)
    parser.add_argument("--backbone", default=ENCODER_DEFAULTS.backbone, choices=pretrained,
                        help="a backbone whose pretrained weights are installed")
    parser.add_argument("--side", type=bounded_int(MIN_SIDE, MAX_SIDE), default=ENCODER_DEFAULTS.side,
                        help="images are resized to SIDE x SIDE pixels")
    parser.add_argument("--channels", type=bounded_int(1), default=64, help="guidance channels compared per photo")
    parser.add_argument("--fit-crops", type=bounded_int(1), default=6, help="random crops per photo to learn the PCA on")
    add_threads_option(parser)
