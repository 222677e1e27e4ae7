"""`--ray [--address ADDR] [--workers N]` of `crosslayer index build|add` and `crosslayer search`: the same work on a
Ray cluster (`crosslayer.distributed`)."""

from __future__ import annotations

import sys

from crosslayer.commands.options import added_summary, positive_int
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


def add_on_ray(index, sources, args, fit_seconds: float, fit_failures: list) -> int:
    """`index build|add --ray`: the pending images encoded by Ray actors, committed here (`index` is closed after)."""
    from crosslayer.distributed import build_on_ray

    if args.on_error == "raise":
        raise UsageError("--on-error raise: a build on Ray skips and reports bad images; use --on-error skip")
    with index:
        report = build_on_ray(index, sources, workers=args.workers, address=args.address,
                              retry_failed=args.retry_failed, embeddings=True if args.embeddings else None,
                              progress=not args.quiet)
        commits = report.commit_seconds
        failed = [(str(path), reason) for path, reason in fit_failures] + list(report.failed)
        print(f"{added_summary(report.added, report.skipped, report.recorded_bad, len(failed))} "
              f"in {report.seconds + fit_seconds:.1f} s (PCA {fit_seconds:.1f} s) on Ray: {report.shards} shards "
              f"encoded, {report.adopted_staged} staged earlier adopted, commit "
              f"{1e3 * (sum(commits) / len(commits) if commits else 0):.1f} ms/shard; {len(index)} in "
              f"{index.directory}")
        for path, reason in failed:
            print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 0


def open_sharded(stack, args, **open_options):
    """`search --ray`: a `ShardedIndex` (its image index, and its codes searched by Ray actors each holding a group
    of the segments), closed with `stack` (a contextlib.ExitStack) as is the Ray session."""
    from crosslayer.distributed import ShardedIndex, ray_session

    stack.enter_context(ray_session(args.address, args.workers))
    return stack.enter_context(ShardedIndex(args.db_dir, args.workers, **open_options))
