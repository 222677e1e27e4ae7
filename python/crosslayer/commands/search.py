"""`crosslayer search DB_DIR QUERY...`: ranked hits from an image index, optionally as a contact sheet."""

from __future__ import annotations

import sys

from crosslayer.commands.options import (add_command, add_threads_option, add_weights_option, channel_count,
                                         positive_int)
from crosslayer.commands.ray_options import add_ray_options, search_on_ray, uses_ray
from crosslayer.errors import UsageError

EXAMPLES = """\
  crosslayer search db query.jpg                           # top 10 over each query's 50 strongest channels
  crosslayer search db q1.jpg q2.jpg --top 5 --channels all
  crosslayer search db query.jpg --sheet hits.png --heatmaps
"""


def run(args) -> int:
    from crosslayer.retrieval.channels import channel_label
    from crosslayer.retrieval.image_index import ImageIndex
    from crosslayer.retrieval.sheet import SheetHit, SheetRow, check_sheet_path, render_sheet

    if uses_ray(args):
        return search_on_ray(args)
    # every argument is checked before the backbone runs on the queries
    if args.sheet:
        check_sheet_path(args.sheet)
    elif args.heatmaps:
        raise UsageError("--heatmaps: draws on the contact sheet; give --sheet too")
    with ImageIndex.open(args.db_dir, "r", threads=args.threads, weights=args.weights) as index:
        results, timing = index.search(args.queries, args.top, args.channels)
        indexed = len(index)
        query_views = ([_attended_query(index.encoder, q, args.channels) for q in args.queries]
                       if args.heatmaps else None)
    for query, hits in zip(args.queries, results):
        print(f"query {query}")
        for hit in hits:
            print(f"  {hit.rank:>3}  {hit.score:>8}  {hit.path}")
    n = len(args.queries)
    print(f"encode {1e3 * timing['encode_s'] / n:.1f} ms/query, search {1e3 * timing['search_s'] / n:.2f} ms/query "
          f"over {indexed} images", file=sys.stderr)
    if args.sheet:
        rows = [SheetRow(q, [SheetHit(h.path, h.score) for h in hits]) for q, hits in zip(args.queries, results)]
        for row, view in zip(rows, query_views or []):
            row.query_pixels, row.query_caption = view, f"query, heat: {channel_label(args.channels)} ch"
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


def register(commands) -> None:
    parser = add_command(commands, "search", run, "search an image index with query images", EXAMPLES)
    parser.add_argument("db_dir", metavar="DB_DIR", help="an image index directory")
    parser.add_argument("queries", nargs="+", metavar="QUERY_IMAGE", help="query image files")
    parser.add_argument("--top", type=positive_int, default=10, help="hits per query")
    parser.add_argument("--channels", type=channel_count, default=50,
                        help="guidance channels compared per query (its strongest), or 'all'; a score is the "
                             "popcount similarity summed over them")
    parser.add_argument("--sheet", default=None,
                        help="write a contact sheet of the results, .png or .html (default: none)")
    parser.add_argument("--heatmaps", action="store_true", help="on the sheet, overlay each query with where its "
                        "compared guidance channels fire (their summed maps; runs the backbone once more per query)")
    add_weights_option(parser, recorded=True)
    add_threads_option(parser)
    add_ray_options(parser)
