"""`crosslayer search DB_DIR QUERY...`: ranked hits from an image index, as text, JSON or a contact sheet.

Queries are images (files, folders, CSV manifests: encoded with the index's encoder), code files (.xlc, e.g. from
`index export`: used as they are, refused if another encoder made them) or indexed images (`--key`: their stored
codes, nothing re-encoded)."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from crosslayer.commands.options import (NOT_GIVEN, ON_ERROR_CHOICES, add_command, add_threads_option,
                                         add_weights_option, channel_count, image_sources, positive_int)
from crosslayer.commands.ray_options import add_ray_options, open_sharded, uses_ray
from crosslayer.config import RETRIEVAL_DEFAULTS, SEARCH_CHANNELS, retrieval_channels
from crosslayer.errors import UsageError

EXAMPLES = """\
  crosslayer search db query.jpg                           # top 10, the index's default channels (see --channels)
  crosslayer search db q1.jpg q2.jpg --top 5 --channels all
  crosslayer search db queries/ --json > hits.json         # every image of a folder (or a CSV) as a query
  crosslayer search db --key holiday/img_001.jpg --normalize
  crosslayer search db query.jpg --candidates 200         # two-stage: re-rank a 200-image shortlist
  crosslayer search db exported.xlc                        # codes from 'crosslayer index export'
  crosslayer search db query.jpg --sheet hits.png --heatmaps
"""
SCORE_HELP = ("a raw score is the masked ternary dot product of the sign codes over the compared channels: an "
              "integer in [-(channels*Dt), channels*Dt], Dt being the PCA dimension")
CODE_FILE_SUFFIX = ".xlc"


@dataclass
class Query:
    label: str  # as given: an image path, a key, or FILE.xlc#row (or the key stored with that row)
    kind: str  # "image", "key" or "codes"
    image: str | None  # the image file, when there is one (for the sheet)
    hits: list


def run(args) -> int:
    from crosslayer.codes import IdentityMismatchError
    from crosslayer.images import BadImagesError, ImageError
    from crosslayer.retrieval.image_index import ImageIndex
    from crosslayer.retrieval.sheet import check_sheet_path

    on_ray = uses_ray(args)
    # every argument is checked before the backbone runs on the queries
    code_files = [q for q in args.queries if Path(q).suffix.lower() == CODE_FILE_SUFFIX]
    image_queries = [q for q in args.queries if q not in code_files]
    if not args.queries and not args.keys:
        raise UsageError("QUERY: give query images (files, folders or CSV manifests), code files (.xlc) or --key KEY")
    if args.sheet:
        check_sheet_path(args.sheet)
        if code_files:
            raise UsageError(f"--sheet: shows query images; {code_files[0]} holds codes only")
    elif args.heatmaps:
        raise UsageError("--heatmaps: draws on the contact sheet; give --sheet too")
    timing = {"encode_s": 0.0, "search_s": 0.0}
    queries, failed = [], []
    with contextlib.ExitStack() as stack:
        open_options = {"verify": args.verify, "threads": args.threads, "weights": args.weights}
        if on_ray:
            sharded = open_sharded(stack, args, **open_options)
            index, codes_search, where = sharded.index, sharded.search_codes, f" on {len(sharded.groups)} Ray actors"
        else:
            index = stack.enter_context(ImageIndex.open(args.db_dir, "r", **open_options))
            codes_search, where = None, ""
        if args.channels is NOT_GIVEN:
            args.channels = retrieval_channels(index.encoder.backbone, index.encoder.layers)
        images = image_sources(image_queries, "QUERY") if image_queries else []
        search = {"top": args.top, "channels": args.channels, "normalize": args.normalize,
                  "candidates": args.candidates, "codes_search": codes_search}
        if images:
            results, spent = index.search(images, **search, on_error=args.on_error)
            failed = [found for found in results if isinstance(found, ImageError)]
            if failed and len(failed) == len(results) and not code_files and not args.keys:
                raise failed[0] if len(failed) == 1 else BadImagesError([(f.path, f.reason) for f in failed],
                                                                        "no query could be searched")
            queries += [Query(path, "image", path, hits) for path, hits in zip(images, results)
                        if not isinstance(hits, ImageError)]
            _add_times(timing, spent)
        for file in code_files:
            codes = _read_code_file(file)
            try:
                results, spent = index.search_codes(codes, **search)
            except IdentityMismatchError as error:
                raise IdentityMismatchError(f"{file}: {error}") from None
            labels = codes.keys or [f"{file}#{row}" for row in range(len(codes))]
            queries += [Query(label, "codes", None, hits) for label, hits in zip(labels, results)]
            _add_times(timing, spent)
        if args.keys:
            results, spent = index.search_keys(args.keys, **search)
            queries += [Query(key, "key", index.path_of(key), hits) for key, hits in zip(args.keys, results)]
            _add_times(timing, spent)
        indexed = len(index)
        hit_paths = sorted({hit.path for query in queries for hit in query.hits})
        missing = index.missing_images(hit_paths)
        views = ([_attended_query(index.encoder, q.image, args.channels) for q in queries] if args.heatmaps else None)
    for failure in failed:
        print(f"failed query: {failure.path}: {failure.reason}", file=sys.stderr)
    _print_results(args, queries, timing, indexed, where, failed)
    if missing:
        print(f"warning: {len(missing)} of {len(hit_paths)} hit images are missing (e.g. {missing[0]}); if the images "
              f"were moved, run 'crosslayer index rebase {args.db_dir} NEW_ROOT'", file=sys.stderr)
    if args.sheet:
        _write_sheet(args, queries, views)
    return 0


def _add_times(total: dict, spent: dict) -> None:
    for name, seconds in spent.items():
        total[name] += seconds


def _read_code_file(file):
    from crosslayer.codes import Codes

    if not Path(file).is_file():
        raise UsageError(f"QUERY: {file} does not exist (expected a code file)")
    return Codes.load(file)


def _print_results(args, queries: list, timing: dict, indexed: int, where: str = "", failed=()) -> None:
    n = max(len(queries), 1)
    if args.json:
        document = {
            "index": str(args.db_dir), "indexed": indexed, "top": args.top, "channels": args.channels,
            "score": "normalized" if args.normalize else "raw",
            "queries": [{"query": q.label, "kind": q.kind,
                         "hits": [{"rank": h.rank, "key": h.key, "path": h.path, "score": h.score, "id": h.id}
                                  for h in q.hits]} for q in queries],
            "failed": [{"query": failure.path, "reason": failure.reason} for failure in failed],
            "timings": {**timing, "encode_ms_per_query": 1e3 * timing["encode_s"] / n,
                        "search_ms_per_query": 1e3 * timing["search_s"] / n},
        }
        print(json.dumps(document, indent=1))
    else:
        for query in queries:
            print(f"query {query.label}")
            for hit in query.hits:
                score = f"{hit.score:>8.4f}" if args.normalize else f"{hit.score:>8}"
                print(f"  {hit.rank:>3}  {score}  {hit.path}")
    print(f"encode {1e3 * timing['encode_s'] / n:.1f} ms/query, search {1e3 * timing['search_s'] / n:.2f} ms/query "
          f"over {indexed} images{where}", file=sys.stderr)


def _write_sheet(args, queries: list, views) -> None:
    from crosslayer.retrieval.channels import channel_label
    from crosslayer.retrieval.sheet import SheetHit, SheetRow, render_sheet

    rows = [SheetRow(q.image, [SheetHit(h.path, h.score) for h in q.hits]) for q in queries]
    for row, view in zip(rows, views or []):
        row.query_pixels, row.query_caption = view, f"query, heat: {channel_label(args.channels)} ch"
    render_sheet(rows, args.sheet)
    print(f"sheet: {args.sheet}", file=sys.stderr)


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


def _retrieval_channels_text() -> str:
    return "; ".join(f"{backbone} {' x '.join(chosen.layers)}: {'all' if chosen.channels is None else chosen.channels}"
                     for backbone, chosen in sorted(RETRIEVAL_DEFAULTS.items()))


def register(commands) -> None:
    from crosslayer.index import VERIFY_POLICIES

    parser = add_command(commands, "search", run, "search an image index with query images, code files or indexed "
                         "images", EXAMPLES)
    parser.add_argument("db_dir", metavar="DB_DIR", help="an image index directory")
    parser.add_argument("queries", nargs="*", metavar="QUERY",
                        help="query image files, folders or CSV manifests (first column 'path'), or code files "
                             "(.xlc) of the same encoder")
    parser.add_argument("--key", dest="keys", nargs="+", default=None, metavar="KEY",
                        help="indexed images as queries, by key or path: their stored codes, not re-encoded")
    parser.add_argument("--top", type=positive_int, default=10, help="hits per query")
    parser.add_argument("--channels", type=channel_count, default=NOT_GIVEN,
                        help="guidance channels compared per query (its strongest), or 'all' (default: in an index "
                             f"of a retrieval pair, its retrieval default ({_retrieval_channels_text()}); else "
                             f"{SEARCH_CHANNELS}); " + SCORE_HELP)
    parser.add_argument("--candidates", type=positive_int, default=None, metavar="N",
                        help="two-stage search: re-rank only the N images of best masked score on the first 63 "
                             "components of every channel (a table built on first use and kept in DB_DIR); default: "
                             "every image (exhaustive, the reference)")
    parser.add_argument("--normalize", action="store_true",
                        help="report scores divided by sqrt(nonzeros of query * nonzeros of hit) over the compared "
                             "channels: in [-1, 1] (the ranking is the raw one) (default: raw scores)")
    parser.add_argument("--on-error", default="skip", choices=ON_ERROR_CHOICES,
                        help="a bad query image (unreadable, empty, too large): report it on stderr (--json: under "
                             "\"failed\") and search the others, or stop there")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document: queries, hits (rank, key, path, score, id), timings")
    parser.add_argument("--verify", choices=VERIFY_POLICIES, default="lazy",
                        help="checksums: 'lazy' checks each segment the search reads, once; 'full' the whole index "
                             "first; 'none' sizes and headers only")
    parser.add_argument("--sheet", default=None,
                        help="write a contact sheet of the results, .png or .html (default: none)")
    parser.add_argument("--heatmaps", action="store_true", help="on the sheet, overlay each query with where its "
                        "compared guidance channels fire (their summed maps; runs the backbone once more per query)")
    add_weights_option(parser, recorded=True)
    add_threads_option(parser)
    add_ray_options(parser)
