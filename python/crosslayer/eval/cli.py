"""The `crosslayer eval ...` subcommands (registered by crosslayer.cli)."""

from __future__ import annotations

import argparse
import json

from crosslayer.backbones.registry import BACKBONES, DEFAULT_BACKBONE
from crosslayer.eval.methods import DEFAULT_FIT_IMAGES, DEFAULT_SEED, METHODS, SPM_LAYERS


def _csv_ints(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _csv_floats(text: str) -> tuple:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


class _LayerPair(argparse.Action):
    """`--layers A B` as elsewhere in the CLI; `--layers A,B` (this command's older form) is still accepted."""

    def __call__(self, parser, namespace, values, option_string=None):
        parts = [part.strip() for value in values for part in value.split(",")]
        if len(parts) != 2 or not all(parts):
            parser.error(f"{option_string}: expected two tap names 'LAYER_T LAYER_T1' (or 'LAYER_T,LAYER_T1'), "
                         f"got {' '.join(values)!r}")
        setattr(namespace, self.dest, tuple(parts))


def cmd_classify(args) -> int:
    from crosslayer.eval.classify import classify

    aconv = {name: getattr(args, name) for name in ("aconv_side", "aconv_region", "aconv_stride", "aconv_region_side",
                                                      "aconv_pca_dim", "aconv_filters", "aconv_epochs", "aconv_lr")}
    record = classify(
        args.data, args.method, backbone=args.backbone, side=args.side, layers=args.layers, pca=not args.no_pca,
        l2=not args.no_l2, power=not args.no_power, spm_levels=args.spm_levels, spm_layer=args.spm_layer,
        cache_dir=args.cache, json_path=args.json, limit_per_class=args.limit_per_class, weights=args.weights,
        batch_size=args.batch_size, threads=args.threads, fit_images=args.fit_images, c_grid=args.c_grid,
        folds=args.folds, seed=args.seed, n_jobs=args.jobs, progress=not args.quiet, **aconv,
    )
    summary = {k: record[k] for k in ("label", "accuracy", "mean_per_class_accuracy", "C", "dims", "bytes_per_image")}
    summary["seconds"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in record["seconds"].items()}
    print(json.dumps(summary, indent=1))
    return 0


def add_classify_parser(eval_sub) -> None:
    """Adds `crosslayer eval classify` to the `eval` subcommands."""
    p = eval_sub.add_parser("classify", help="linear-SVM classification accuracy of one method on a manifest data set")
    p.add_argument("--data", required=True, help="folder holding manifest.csv (path,label,split); the SVM uses train and test, val is ignored")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(BACKBONES))
    p.add_argument("--side", type=int, default=448)
    p.add_argument("--layers", nargs="+", action=_LayerPair, default=None, metavar="LAYER",
                   help="tap names of layer t and of a later guidance layer at the same stride, e.g. "
                        "'features.16 features.17' (default: the backbone's pair)")
    p.add_argument("--no-pca", action="store_true", help="cross-layer: skip the decorrelating PCA of local features")
    p.add_argument("--no-l2", action="store_true", help="cross-layer: skip the per-channel L2 normalisation")
    p.add_argument("--no-power", action="store_true", help="cross-layer: skip the signed square root")
    p.add_argument("--spm-levels", type=_csv_ints, default=(0, 1, 2))
    p.add_argument("--spm-layer", choices=SPM_LAYERS, default="t1", help="SPM pooling of layer t, t+1 or both")
    p.add_argument("--aconv-side", type=int, default=512)
    p.add_argument("--aconv-region", type=int, default=128)
    p.add_argument("--aconv-stride", type=int, default=32)
    p.add_argument("--aconv-region-side", type=int, default=224, help="network input side of a region crop (aconv)")
    p.add_argument("--aconv-pca-dim", type=int, default=256)
    p.add_argument("--aconv-filters", type=int, default=100)
    p.add_argument("--aconv-epochs", type=int, default=50)
    p.add_argument("--aconv-lr", type=float, default=0.01)
    p.add_argument("--limit-per-class", type=int, default=None, help="use at most this many images per class and split")
    p.add_argument("--weights", default=None, help="backbone weights (default: the pinned pretrained ones)")
    p.add_argument("--cache", default=None, help="cache folder (default: $CROSSLAYER_CACHE/eval)")
    p.add_argument("--json", default=None, help="write the record here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--fit-images", type=int, default=DEFAULT_FIT_IMAGES, help="training images sampled to fit PCAs")
    p.add_argument("--c-grid", type=_csv_floats, default=tuple(10.0**e for e in range(-3, 4)))
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="parallel SVM fits during C selection")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_classify)
