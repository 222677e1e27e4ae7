"""`--ray [--address ADDR] [--workers N]` of `crosslayer index build|add` and `crosslayer search`: the same work on a
Ray cluster (`crosslayer.distributed`)."""

from __future__ import annotations

import sys

from crosslayer.commands.options import positive_int
from crosslayer.errors import UsageError


def add_ray_options(parser) -> None:
    group = parser.add_argument_group("Ray (pip install 'crosslayer[ray]')")
    group.add_argument("--ray", action="store_true",
                       help="run on Ray: a local cluster started for this command (token authentication, loopback "
                            "only), or the cluster at --address")
    group.add_argument("--address", default=None, metavar="ADDR",
                       help="HOST:PORT of a running Ray cluster (one not on this machine needs RAY_AUTH_MODE=token)")
    group.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="Ray actors (default: one per CPU of the cluster)")


def uses_ray(args) -> bool:
    """Whether the command runs on Ray; UsageError for --address/--workers without --ray."""
    if getattr(args, "ray", False):
        return True
    if getattr(args, "address", None) is not None or getattr(args, "workers", None) is not None:
        raise UsageError("--address/--workers: they choose the Ray cluster; give --ray too")
    return False


def add_on_ray(index, sources, args, fit_seconds: float) -> int:
    """`index build|add --ray`: the pending images encoded by Ray actors, committed here."""
    from crosslayer.distributed import build_on_ray

    if args.on_error == "raise":
        raise UsageError("--on-error raise: a build on Ray skips and reports bad images; use --on-error skip")
    with index:
        report = build_on_ray(index, sources, workers=args.workers, address=args.address, progress=not args.quiet)
        commits = report.commit_seconds
        print(f"indexed {report.added} images ({report.skipped} already there, {len(report.failed)} failed) "
              f"in {report.seconds + fit_seconds:.1f} s (PCA {fit_seconds:.1f} s) on Ray: {report.shards} shards "
              f"encoded, {report.adopted_staged} staged earlier adopted, commit "
              f"{1e3 * (sum(commits) / len(commits) if commits else 0):.1f} ms/shard; {len(index)} in "
              f"{index.directory}")
        for path, reason in report.failed:
            print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 0


def search_on_ray(args) -> int:
    """`search --ray`: the codes searched by Ray actors, each holding a group of the index's segments."""
    from crosslayer.distributed import ShardedIndex, ray_session

    if args.sheet or args.heatmaps:
        raise UsageError("--sheet/--heatmaps: not available with --ray")
    with ray_session(args.address, args.workers) as _, ShardedIndex(args.db_dir, args.workers) as index:
        results, timing = index.search(args.queries, args.top, args.channels)
        indexed = len(index)
    for query, hits in zip(args.queries, results):
        print(f"query {query}")
        for hit in hits:
            print(f"  {hit.rank:>3}  {hit.score:>8}  {hit.path}")
    n = len(args.queries)
    print(f"encode {1e3 * timing['encode_s'] / n:.1f} ms/query, search {1e3 * timing['search_s'] / n:.2f} ms/query "
          f"over {indexed} images on {len(index.groups)} Ray actors", file=sys.stderr)
    return 0
