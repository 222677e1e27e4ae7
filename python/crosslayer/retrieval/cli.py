"""Command-line subcommands of retrieval: `index build|add`, `search`, `eval retrieve`. Registered by crosslayer.cli."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _encoder_arguments(parser) -> None:
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--layers", nargs=2, metavar=("LAYER_T", "LAYER_T1"), help="default: the backbone's pair")
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--pca-dim", type=int, default=None, help="default: full decorrelating PCA (the paper)")
    parser.add_argument("--weights", default=None, help="a state-dict file, or 'random' (untrained; tests only)")
    parser.add_argument("--fit-images", type=int, default=256, help="images sampled to learn the PCA")


def _runtime_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")


def _image_sources(values) -> list[str]:
    from crosslayer.retrieval.datasets import image_paths

    paths = []
    for value in values:
        path = Path(value)
        if path.is_file() and path.suffix.lower() != ".csv":
            paths.append(str(path))
        else:
            paths.extend(image_paths(path))
    if not paths:
        raise ValueError(f"images: no images found in {values}")
    return paths


def _cmd_index_build(args) -> int:
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.image_index import ImageIndex

    sources = _image_sources(args.images)
    encoder = CrossLayerEncoder(backbone=args.backbone, layers=args.layers, side=args.side, pca_dim=args.pca_dim,
                                weights=args.weights, fit_images=args.fit_images, batch_size=args.batch_size,
                                threads=args.threads)
    if ImageIndex.exists(args.db_dir):
        index = ImageIndex.resume(args.db_dir, encoder)
        print(f"resuming the build of {args.db_dir} ({len(index)} images indexed)")
    else:
        # creates, or completes an interrupted creation with its saved encoder
        index = ImageIndex.create(args.db_dir, encoder, fit_sources=sources)
    return _add(index, sources)


def _cmd_index_add(args) -> int:
    from crosslayer.retrieval.image_index import ImageIndex

    index = ImageIndex.open(args.db_dir, "a", batch_size=args.batch_size, threads=args.threads, weights=args.weights)
    return _add(index, _image_sources(args.images))


def _add(index, sources) -> int:
    with index:
        report = index.add(sources, progress=True)
        print(f"indexed {report.added} images ({report.skipped} already there, {len(report.failed)} failed) "
              f"in {report.seconds:.1f} s; {len(index)} in {index.directory}")
        for path, reason in report.failed:
            print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 0


def _cmd_search(args) -> int:
    from crosslayer.retrieval.channels import channel_label
    from crosslayer.retrieval.image_index import ImageIndex
    from crosslayer.retrieval.sheet import SheetHit, SheetRow, check_sheet_path, render_sheet

    # every argument is checked before the backbone runs on the queries
    channels = None if args.channels == "all" else _int_argument(args.channels, "--channels")
    if args.top < 1:
        raise ValueError(f"--top: expected a positive number of hits, got {args.top}")
    if args.sheet:
        check_sheet_path(args.sheet)
    elif args.heatmaps:
        raise ValueError("--heatmaps: draws on the contact sheet; give --sheet too")
    with ImageIndex.open(args.db_dir, "r", threads=args.threads, weights=args.weights) as index:
        results, timing = index.search(args.queries, args.top, channels)
        indexed = len(index)
        query_views = [_attended_query(index.encoder, q, channels) for q in args.queries] if args.heatmaps else None
    for query, hits in zip(args.queries, results):
        print(f"query {query}")
        for hit in hits:
            print(f"  {hit.rank:>3}  {hit.score:>8}  {hit.path}")
    n = max(len(args.queries), 1)
    print(f"encode {1e3 * timing['encode_s'] / n:.1f} ms/query, search {1e3 * timing['search_s'] / n:.2f} ms/query "
          f"over {indexed} images", file=sys.stderr)
    if args.sheet:
        rows = [SheetRow(q, [SheetHit(h.path, h.score) for h in hits]) for q, hits in zip(args.queries, results)]
        for row, view in zip(rows, query_views or []):
            row.query_pixels, row.query_caption = view, f"query, heat: {channel_label(channels)} ch"
        render_sheet(rows, args.sheet)
        print(f"sheet: {args.sheet}", file=sys.stderr)
    return 0


def _attended_query(encoder, query, channels):
    """The query as the network saw it, with the sum of the guidance maps of the channels the search compared for
    it overlaid (`crosslayer.heatmap`); the backbone runs on it once more."""
    import numpy as np

    from crosslayer.heatmap import attended_region, guidance_maps
    from crosslayer.retrieval.sheet import THUMB
    from crosslayer.search import select_channels

    maps = guidance_maps(encoder, query)
    compared = np.arange(encoder.Dk) if channels is None else select_channels(maps.channel_mean[None], channels)[0]
    return attended_region(maps, compared, THUMB)[0]


def _int_argument(text, name) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an integer or 'all', got {text!r}") from None


def _cmd_eval_retrieve(args) -> int:
    from crosslayer.retrieval.channels import parse_channel_list
    from crosslayer.retrieval.evaluate import compute_features, evaluate, markdown_table
    from crosslayer.encoder import CrossLayerEncoder

    probe = CrossLayerEncoder(backbone=args.backbone, layers=args.layers, side=args.side, pca_dim=args.pca_dim)
    channel_counts = parse_channel_list(args.channels, probe.Dk)
    learn = args.learn or args.distractors
    if not learn:
        raise ValueError("--learn: give image folders (not the retrieval set) to learn the PCA and SPoC whitening on, "
                         "or --distractors (used for learning too)")
    options = dict(backbone=args.backbone, layers=args.layers, side=args.side, pca_dim=args.pca_dim,
                   weights=args.weights, fit_images=args.fit_images, batch_size=args.batch_size, threads=args.threads)
    cache, rset = compute_features(args.data, args.distractors, learn, args.cache, channel_counts, options,
                                   learn_images=args.learn_images, with_float=not args.no_float)
    records = evaluate(cache, rset, args.distractors, channel_counts, with_float=not args.no_float,
                       spoc_dim=args.spoc_dim)
    print(markdown_table(records))
    if args.json:
        from crosslayer._atomic import atomic_write

        with atomic_write(args.json, "w") as handle:
            json.dump({"format": "crosslayer-retrieval-eval", "version": 1, "data": str(args.data),
                       "distractors": [str(d) for d in args.distractors], "records": records}, handle, indent=1)
    return 0


def register(sub, eval_sub) -> None:
    """Adds `index`, `search` to the top-level subcommands and `retrieve` to the `eval` subcommands."""
    index = sub.add_parser("index", help="build or extend an on-disk image index").add_subparsers(dest="index_command", required=True)
    build = index.add_parser("build", help="index images (resumes an interrupted build of the same DB_DIR)")
    build.add_argument("db_dir")
    build.add_argument("--images", nargs="+", required=True, help="image folders, CSV manifests or image files")
    _encoder_arguments(build)
    _runtime_arguments(build)
    build.set_defaults(func=_cmd_index_build)
    add = index.add_parser("add", help="add images to an existing index (already indexed paths are skipped)")
    add.add_argument("db_dir")
    add.add_argument("--images", nargs="+", required=True)
    add.add_argument("--weights", default=None, help="override the weights recorded at build time (a moved state-dict file)")
    _runtime_arguments(add)
    add.set_defaults(func=_cmd_index_add)

    search = sub.add_parser("search", help="search an image index with query images")
    search.add_argument("db_dir")
    search.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    search.add_argument("--top", type=int, default=10)
    search.add_argument("--channels", default="50", help="guidance channels compared per query, or 'all'")
    search.add_argument("--sheet", help="write a contact sheet of the results (.png or .html)")
    search.add_argument("--heatmaps", action="store_true", help="on the sheet, overlay each query with where its "
                        "compared guidance channels fire (their summed maps; runs the backbone once more per query)")
    search.add_argument("--weights", default=None, help="override the weights recorded at build time (a moved state-dict file)")
    search.add_argument("--threads", type=int, default=0)
    search.set_defaults(func=_cmd_search)

    retrieve = eval_sub.add_parser("retrieve", help="mAP/recall of SPoC, embedding, cross-layer float and codes")
    retrieve.add_argument("--data", required=True, help="folder with queries.csv and database.csv (path,item)")
    retrieve.add_argument("--distractors", nargs="*", default=[], help="image folders added to the database")
    retrieve.add_argument("--learn", nargs="*", default=None, help="image folders to learn PCA/whitening on "
                          "(default: the distractors)")
    retrieve.add_argument("--learn-images", type=int, default=800)
    retrieve.add_argument("--channels", default="10,20,50,100,200,all")
    retrieve.add_argument("--spoc-dim", type=int, default=256)
    retrieve.add_argument("--no-float", action="store_true", help="skip cross-layer float (the slowest method)")
    retrieve.add_argument("--cache", default=None, help="feature cache directory (resumable; one per encoder "
                          "configuration and learn set; default: $CROSSLAYER_CACHE/retrieval-eval)")
    retrieve.add_argument("--json", help="write one record per method and channel count")
    _encoder_arguments(retrieve)
    _runtime_arguments(retrieve)
    retrieve.set_defaults(func=_cmd_eval_retrieve)
