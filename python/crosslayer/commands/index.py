"""`crosslayer index build|add`: an on-disk image index, built (resumably) and extended."""

from __future__ import annotations

import inspect
import sys

from crosslayer.commands.options import (add_command, add_encoder_options, add_on_error_option, add_quiet_option,
                                         add_runtime_options, add_weights_option, build_encoder, fit_with_notice,
                                         image_sources, runtime_options, subcommands)
from crosslayer.commands.ray_options import add_on_ray, add_ray_options, uses_ray
from crosslayer.errors import UsageError

BUILD_EXAMPLES = """\
  crosslayer index build db --images photos/               # every image under photos/
  crosslayer index build db --images a/ b.csv c.jpg --side 224 --pca-dim 64
  crosslayer index build db --images photos/               # again: resumes, encodes only what is missing
"""
ADD_EXAMPLES = """\
  crosslayer index add db --images new-photos/
  crosslayer index add db --images more.csv --weights /moved/vgg16.pth
"""
IMAGES_HELP = "image folders (their manifest.csv if they have one), CSV manifests (first column 'path') or image files"


def run_build(args) -> int:
    from crosslayer.retrieval.image_index import ImageIndex

    encoder = build_encoder(args)
    sources = image_sources(args.images, "--images")
    fit_seconds = 0.0
    if ImageIndex.exists(args.db_dir):
        index = ImageIndex.resume(args.db_dir, encoder)
        print(f"resuming the build of {args.db_dir} ({len(index)} images indexed)", file=sys.stderr)
    else:
        if not ImageIndex.interrupted_creation(args.db_dir):  # an interrupted creation has its saved, fitted encoder
            fit_seconds = fit_with_notice(encoder, sources, progress=not args.quiet)
        index = ImageIndex.create(args.db_dir, encoder, fit_sources=sources)
    return _add(index, sources, args, fit_seconds)


def run_add(args) -> int:
    from crosslayer.retrieval.image_index import ImageIndex

    sources = image_sources(args.images, "--images")
    index = ImageIndex.open(args.db_dir, "a", weights=args.weights, **runtime_options(args))
    return _add(index, sources, args, 0.0)


def _on_error_keywords(add, on_error: str) -> dict:
    """`ImageIndex.add` skips and reports bad images; it stops at one only if it takes on_error."""
    if "on_error" in inspect.signature(add).parameters:
        return {"on_error": on_error}
    if on_error == "raise":
        raise UsageError("--on-error raise: this image index always skips and reports bad images; use --on-error skip")
    return {}


def _add(index, sources, args, fit_seconds: float) -> int:
    if uses_ray(args):
        return add_on_ray(index, sources, args, fit_seconds)
    with index:
        report = index.add(sources, progress=not args.quiet, **_on_error_keywords(index.add, args.on_error))
        print(f"indexed {report.added} images ({report.skipped} already there, {len(report.failed)} failed) "
              f"in {report.seconds + fit_seconds:.1f} s (PCA {fit_seconds:.1f} s); {len(index)} in {index.directory}")
        for path, reason in report.failed:
            print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 0


def register(commands) -> None:
    group = commands.add_parser("index", help="build or extend an on-disk image index",
                                description="Build or extend an on-disk image index (searched with 'crosslayer search').")
    actions = subcommands(group, "index_command")

    build = add_command(actions, "build", run_build, "index images (resumes an interrupted build of the same DB_DIR)",
                        BUILD_EXAMPLES)
    build.add_argument("db_dir", metavar="DB_DIR", help="the index directory (created, or resumed)")
    build.add_argument("--images", nargs="+", required=True, help=IMAGES_HELP)
    add_encoder_options(build)
    add_runtime_options(build)
    add_on_error_option(build)
    add_quiet_option(build)
    add_ray_options(build)

    add = add_command(actions, "add", run_add, "add images to an existing index (already indexed paths are skipped)",
                      ADD_EXAMPLES)
    add.add_argument("db_dir", metavar="DB_DIR", help="an image index directory")
    add.add_argument("--images", nargs="+", required=True, help=IMAGES_HELP)
    add_weights_option(add, recorded=True)
    add_runtime_options(add)
    add_on_error_option(add)
    add_quiet_option(add)
    add_ray_options(add)
