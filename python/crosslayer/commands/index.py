"""`crosslayer index build|add` (and `crosslayer extract`, the same build): images into an on-disk image index.

The management actions (ls, rm, compact, verify, export, rebase) live in `commands.index_manage`."""

from __future__ import annotations

import sys

from crosslayer.commands import index_manage
from crosslayer.commands.options import (add_command, add_encoder_options, add_on_error_option, add_precision_options,
                                         add_profile_option, add_quiet_option, add_runtime_options, add_weights_option,
                                         added_summary, build_encoder, image_sources, positive_float, runtime_options,
                                         subcommands)
from crosslayer.commands.ray_options import add_on_ray, add_ray_options, uses_ray

BUILD_EXAMPLES = """\
  crosslayer index build db --images photos/               # every image under photos/
  crosslayer index build db --images a/ b.csv c.jpg --side 224 --pca-dim 64
  crosslayer index build db --images photos/               # again: resumes, encodes only what is missing
  crosslayer index build db --images photos/ --embeddings --commit-seconds 10
"""
ADD_EXAMPLES = """\
  crosslayer index add db --images new-photos/
  crosslayer index add db --images more.csv --weights /moved/vgg16.pth
  crosslayer index add db --images photos/ --retry-failed  # try the images recorded as bad again
"""
IMAGES_HELP = "image folders (their manifest.csv if they have one), CSV manifests (first column 'path') or image files"


def add_build_options(parser) -> None:
    """What `index build` and its alias `extract` take besides their inputs."""
    add_encoder_options(parser, retrieval=True)
    parser.add_argument("--encoder", default=None,
                        help="a fitted encoder file (.xle) to use as it is, instead of the encoder options and a PCA "
                             "fit (default: learn one)")
    add_runtime_options(parser)
    add_precision_options(parser)
    add_profile_option(parser)
    add_adding_options(parser)
    add_ray_options(parser)


def add_adding_options(parser, embeddings_help: str = "keep each image's pooled backbone embedding (a side array)"):
    add_on_error_option(parser)
    parser.add_argument("--commit-seconds", type=positive_float, default=30.0,
                        help="commit the work done at least this often: a kill loses at most that much")
    parser.add_argument("--retry-failed", action="store_true",
                        help="encode again the images recorded as bad by an earlier run (default: skipped)")
    parser.add_argument("--embeddings", action="store_true", help=embeddings_help)
    add_quiet_option(parser)


def run_build(args) -> int:
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.extract import extract, open_for_build
    from crosslayer.retrieval.image_index import ImageIndex

    if not args.encoder:
        _resume_with_recorded_settings(args)
    encoder = CrossLayerEncoder.load(args.encoder, **runtime_options(args)) if args.encoder else build_encoder(args)
    sources = image_sources(args.images, args.images_option)
    progress = not args.quiet
    if ImageIndex.exists(args.db_dir):
        print(f"resuming the build of {args.db_dir}", file=sys.stderr)
    elif progress and ImageIndex.will_fit(args.db_dir, encoder):
        count = min(len(sources), encoder.fit_images) if encoder.fit_images else len(sources)
        print(f"learning the PCA on {count} of {len(sources)} images ...", file=sys.stderr, flush=True)
    if uses_ray(args):
        index, fit_failures, fit_seconds = open_for_build(args.db_dir, encoder, sources, args.embeddings,
                                                          args.on_error, progress)
        return add_on_ray(index, sources, args, fit_seconds, fit_failures)
    report = extract(sources, args.db_dir, encoder, save_embedding=args.embeddings, on_error=args.on_error,
                     progress=progress, commit_seconds=args.commit_seconds, retry_failed=args.retry_failed)
    _print_report(added_summary(report.done, report.skipped, report.recorded_bad, len(report.failed)), report.failed,
                  report.seconds, report.fit_seconds, report.total, args.db_dir)
    if args.profile:
        print(encoder.stage_times_.table(report.seconds))
    return 0


def _resume_with_recorded_settings(args) -> None:
    """Resuming a build: --layers and --pca-dim not given are the index's own, so an index built before the retrieval
    defaults changed (or with other ones) resumes with the options it was built with."""
    from pathlib import Path

    from crosslayer.commands.options import NOT_GIVEN
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.image_index import ImageIndex

    if not (ImageIndex.exists(args.db_dir) or ImageIndex.interrupted_creation(args.db_dir)):
        return
    recorded = CrossLayerEncoder.read_meta(Path(args.db_dir) / "encoder.xle")
    if recorded["backbone"] != args.backbone:
        return  # another network: the resume check names the difference
    if args.layers is None:
        args.layers = tuple(recorded["layers"])
    if args.pca_dim is NOT_GIVEN:
        args.pca_dim = recorded["pca_dim"]


def run_add(args) -> int:
    from crosslayer.retrieval.image_index import ImageIndex

    sources = image_sources(args.images, "--images")
    if uses_ray(args):
        index = ImageIndex.open(args.db_dir, "a", weights=args.weights, **runtime_options(args))
        return add_on_ray(index, sources, args, 0.0, [])
    with ImageIndex.open(args.db_dir, "a", weights=args.weights, **runtime_options(args)) as index:
        report = index.add(sources, commit_seconds=args.commit_seconds, on_error=args.on_error,
                           retry_failed=args.retry_failed, embeddings=True if args.embeddings else None,
                           progress=not args.quiet)
        total = len(index)
    _print_report(added_summary(report.added, report.skipped, report.recorded_bad, len(report.failed)), report.failed,
                  report.seconds, 0.0, total, args.db_dir)
    return 0


def _print_report(summary: str, failed: list, seconds: float, fit_seconds: float, total: int, directory) -> None:
    print(f"{summary} in {seconds:.1f} s "
          f"(PCA {fit_seconds:.1f} s); {total} in {directory}")
    for path, reason in failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)


def register(commands) -> None:
    group = commands.add_parser("index", help="build, extend, list, check and maintain an on-disk image index",
                                description="Build, extend, list, check and maintain an on-disk image index "
                                            "(searched with 'crosslayer search', described by 'crosslayer info').")
    actions = subcommands(group, "index_command")

    build = add_command(actions, "build", run_build, "index images (resumes an interrupted build of the same DB_DIR)",
                        BUILD_EXAMPLES)
    build.add_argument("db_dir", metavar="DB_DIR", help="the index directory (created, or resumed)")
    build.add_argument("--images", nargs="+", required=True, help=IMAGES_HELP)
    build.set_defaults(images_option="--images")
    add_build_options(build)

    add = add_command(actions, "add", run_add, "add images to an existing index (already indexed paths are skipped)",
                      ADD_EXAMPLES)
    add.add_argument("db_dir", metavar="DB_DIR", help="an image index directory")
    add.add_argument("--images", nargs="+", required=True, help=IMAGES_HELP)
    add_weights_option(add, recorded=True)
    add_runtime_options(add)
    add_adding_options(add, embeddings_help="start keeping embeddings (an empty index only); an index that keeps "
                                            "them always does")
    add_ray_options(add)

    index_manage.register(actions)
