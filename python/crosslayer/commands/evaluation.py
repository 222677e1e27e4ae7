"""`crosslayer eval classify|retrieve`: classification accuracy and retrieval mAP of the representations."""

from __future__ import annotations

import json

from crosslayer.commands.options import (add_command, add_input_options, add_network_options, add_pca_options, add_quiet_option,
                                         add_runtime_options, bounded_int, check_side, comma_floats, comma_ints,
                                         positive_int, subcommands)
from crosslayer.config import ENCODER_DEFAULTS
from crosslayer.errors import UsageError

CLASSIFY_EXAMPLES = """\
  crosslayer eval classify --data cub100 --method crosslayer --json crosslayer.json
  crosslayer eval classify --data scene15 --method aconv-fast   # AConv approximated from one whole-image pass
  crosslayer eval classify --data cub100 --method aconv --limit-per-class 2   # exact AConv: ~24x a pass an image
  crosslayer eval classify --data cub100 --method crosslayer --no-pca --limit-per-class 10   # a quick ablation
  crosslayer eval classify --data voc2007 --method global        # labels like dog;person: per-class SVMs, mean AP
  crosslayer eval classify --data scene15 --method global --multiclass ovr --resplits 3    # paper's SVM, 3 more splits
"""
RETRIEVE_EXAMPLES = """\
  crosslayer eval retrieve --data smvs --distractors distractors/ --json retrieval.json
  crosslayer eval retrieve --data smvs --learn other-photos/ --channels 50,all --no-float
"""


def run_classify(args) -> int:
    from crosslayer.eval.classify import classify

    check_side(args.backbone, args.side)
    aconv = {name: getattr(args, name) for name in ("aconv_side", "aconv_region", "aconv_stride", "aconv_region_side",
                                                      "aconv_pca_dim", "aconv_filters", "aconv_epochs", "aconv_lr",
                                                      "scfv_atoms", "scfv_alpha", "fc_guidance")}
    record = classify(
        args.data, args.method, backbone=args.backbone, side=args.side, layers=args.layers, pca=not args.no_pca,
        l2=not args.no_l2, power=not args.no_power, spm_levels=args.spm_levels, spm_layer=args.spm_layer,
        cache_dir=args.cache, json_path=args.json, limit_per_class=args.limit_per_class, weights=args.weights,
        batch_size=args.batch_size, threads=args.threads, fit_images=args.fit_images, c_grid=args.c_grid,
        folds=args.folds, seed=args.seed, n_jobs=args.jobs, progress=not args.quiet, multiclass=args.multiclass,
        resplits=args.resplits, **aconv,
    )
    summary = {k: record[k] for k in ("label", "accuracy", "mean_per_class_accuracy", "mean_ap", "mean_ap_area", "C",
                                      "dims", "bytes_per_image") if k in record}  # mean AP: multi-label manifests
    if "resplits" in record:
        summary["resplit_accuracies"] = [split["accuracy"] for split in record["resplits"]]
    summary["seconds"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in record["seconds"].items()}
    print(json.dumps(summary, indent=1))
    return 0


def run_retrieve(args) -> int:
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.channels import parse_channel_list
    from crosslayer.retrieval.evaluate import compute_features, evaluate, markdown_table, write_results

    check_side(args.backbone, args.side)
    learn = args.learn or args.distractors
    if not learn:
        raise UsageError("--learn: give image folders (not the retrieval set) to learn the PCA and SPoC whitening on, "
                         "or --distractors (used for learning too)")
    probe = CrossLayerEncoder(backbone=args.backbone, layers=args.layers, side=args.side, pca_dim=args.pca_dim)
    channel_counts = parse_channel_list(args.channels, probe.Dk)
    options = dict(backbone=args.backbone, layers=args.layers, side=args.side, pca_dim=args.pca_dim,
                   weights=args.weights, fit_images=args.fit_images, batch_size=args.batch_size, threads=args.threads)
    progress = not args.quiet
    cache, rset = compute_features(args.data, args.distractors, learn, args.cache, channel_counts, options,
                                   learn_images=args.learn_images, with_float=not args.no_float, progress=progress)
    records = evaluate(cache, rset, args.distractors, channel_counts, with_float=not args.no_float,
                       spoc_dim=args.spoc_dim, progress=progress)
    print(markdown_table(records))
    if args.json:
        write_results(args.json, args.data, args.distractors, records)
    return 0


def _add_classify(actions) -> None:
    from crosslayer.eval.methods import METHODS, SPM_LAYERS
    from crosslayer.eval.svm import DEFAULT_MULTICLASS, MULTICLASS
    from crosslayer.eval.svm import DEFAULT_C_GRID

    p = add_command(actions, "classify", run_classify, "linear-SVM classification accuracy of one method on a "
                    "manifest data set", CLASSIFY_EXAMPLES)
    p.add_argument("--data", required=True, help="folder holding manifest.csv (path,label,split); the SVM trains on "
                   "train (C by cross-validation) and is tested on test; val is ignored. Labels separated by ';' "
                   "(dog;person) make a multi-label set: one binary SVM per class, VOC 2007 11-point mean AP")
    p.add_argument("--method", required=True, choices=METHODS, help="the representation; aconv is the paper's AConv (every region cropped and run through the network, "
                        "~24x a pass), aconv-fast an approximation of it (region embeddings averaged from one "
                        "whole-image pass: no region crops)")
    add_network_options(p)
    add_input_options(p, policy=False)
    p.add_argument("--no-pca", action="store_true", help="cross-layer: skip the decorrelating PCA of local features")
    p.add_argument("--no-l2", action="store_true", help="cross-layer: skip the per-channel L2 normalisation")
    p.add_argument("--no-power", action="store_true", help="cross-layer: skip the signed square root")
    p.add_argument("--spm-levels", type=comma_ints, default=(0, 1, 2), help="SPM pyramid levels, comma-separated")
    p.add_argument("--spm-layer", choices=SPM_LAYERS, default="t1", help="SPM pooling of layer t, t+1 or both")
    p.add_argument("--aconv-side", type=positive_int, default=512, help="aconv: image side before region cropping")
    p.add_argument("--aconv-region", type=positive_int, default=128, help="aconv: region side in image pixels")
    p.add_argument("--aconv-stride", type=int, default=32, help="aconv: region stride in image pixels")
    p.add_argument("--aconv-region-side", type=positive_int, default=224, help="aconv: network input side of a region")
    p.add_argument("--aconv-pca-dim", type=positive_int, default=256, help="aconv: PCA dimension of region features")
    p.add_argument("--aconv-filters", type=positive_int, default=100, help="aconv: learnt filters")
    p.add_argument("--aconv-epochs", type=positive_int, default=50, help="aconv: training epochs")
    p.add_argument("--aconv-lr", type=float, default=0.01, help="aconv: learning rate")
    p.add_argument("--scfv-atoms", type=positive_int, default=100, help="scfv: dictionary size")
    p.add_argument("--scfv-alpha", type=float, default=0.1, help="scfv: lasso weight (features of unit RMS norm)")
    p.add_argument("--fc-guidance", choices=("softmax", "relu"), default="softmax",
                   help="fc-fc: region logits after softmax or ReLU as guidance")
    p.add_argument("--limit-per-class", type=positive_int, default=None,
                   help="use at most this many images per class and split (default: all)")
    p.add_argument("--cache", default=None, help="cache folder (default: $CROSSLAYER_CACHE/eval)")
    p.add_argument("--json", default=None, help="write the record here (default: print a summary only)")
    add_runtime_options(p, decode_workers=False)
    p.add_argument("--fit-images", type=positive_int, default=ENCODER_DEFAULTS.fit_images,
                   help="training images sampled (seeded) to fit the PCAs")
    p.add_argument("--c-grid", type=comma_floats, default=DEFAULT_C_GRID, help="SVM C values tried, comma-separated")
    p.add_argument("--folds", type=bounded_int(2), default=3, help="cross-validation folds choosing C")
    p.add_argument("--jobs", type=positive_int, default=1, help="parallel SVM fits during C selection")
    p.add_argument("--multiclass", choices=MULTICLASS, default=DEFAULT_MULTICLASS,
                   help="SVM multiclass scheme: ovo (libsvm one-vs-one, default) or ovr (one-vs-rest, the paper's)")
    p.add_argument("--resplits", type=bounded_int(0), default=0,
                   help="also evaluate this many seeded random train/test splits with the manifest's class sizes "
                        "(one kernel of all images against all, computed once)")
    p.add_argument("--seed", type=int, default=ENCODER_DEFAULTS.seed,
                   help="PCA sample, AConv training, folds, and the network itself for --weights random")
    add_quiet_option(p)


def _add_retrieve(actions) -> None:
    p = add_command(actions, "retrieve", run_retrieve, "mAP and recall of SPoC, the global embedding, cross-layer "
                    "float and sign codes", RETRIEVE_EXAMPLES)
    p.add_argument("--data", required=True, help="folder with queries.csv and database.csv (path,item)")
    p.add_argument("--distractors", nargs="*", default=[], help="image folders added to the database (default: none)")
    p.add_argument("--learn", nargs="*", default=None,
                   help="image folders to learn the PCA and SPoC whitening on (default: the distractors)")
    p.add_argument("--learn-images", type=positive_int, default=800, help="images sampled from the learn folders")
    p.add_argument("--channels", default="10,20,50,100,200,all",
                   help="guidance channel counts compared per query, comma-separated, 'all' for every channel")
    p.add_argument("--spoc-dim", type=positive_int, default=256, help="SPoC: PCA-whitened dimension")
    p.add_argument("--no-float", action="store_true", help="skip cross-layer float (the slowest method)")
    p.add_argument("--cache", default=None, help="feature cache directory (resumable; one per encoder configuration "
                   "and learn set; default: $CROSSLAYER_CACHE/retrieval-eval)")
    p.add_argument("--json", default=None, help="write one record per method and channel count (default: none)")
    add_network_options(p)
    add_input_options(p, policy=False)
    add_pca_options(p)
    add_runtime_options(p, decode_workers=False)
    add_quiet_option(p)


def register(commands) -> None:
    group = commands.add_parser("eval", help="evaluations: classification accuracy, retrieval mAP",
                                description="Evaluations: classification accuracy, retrieval mAP.")
    actions = subcommands(group, "eval_command")
    _add_classify(actions)
    _add_retrieve(actions)
