"""`crosslayer extract SOURCE STORE`: images into a resumable store of codes and embeddings."""

from __future__ import annotations

from crosslayer.commands.options import (add_command, add_encoder_options, add_on_error_option, add_quiet_option,
                                         add_runtime_options, build_encoder, fit_with_notice, image_sources,
                                         positive_int, runtime_options)

EXAMPLES = """\
  crosslayer extract photos/ store/                       # every image under photos/
  crosslayer extract manifest.csv store/ --side 224       # the 'path' column of a CSV
  crosslayer extract more/ store/                         # resumes: only images not yet in store/
  crosslayer extract photos/ store/ --encoder encoder.xle # a fitted encoder: no PCA to learn
"""


def run(args) -> int:
    from pathlib import Path

    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.extract import extract

    # an existing store resumes only with the encoder it was made with (StoreError naming the differences), run
    # with this command's runtime options
    encoder = CrossLayerEncoder.load(args.encoder, **runtime_options(args)) if args.encoder else build_encoder(args)
    sources = image_sources([args.source], "SOURCE")
    store = Path(args.store)
    fit_seconds = 0.0
    if encoder.pca_ is None and not (store / "store.json").exists():
        fit_seconds = fit_with_notice(encoder, sources, progress=not args.quiet)
    report = extract(sources, store, encoder, chunk_size=args.chunk_size, save_embedding=not args.no_embedding,
                     on_error=args.on_error, progress=not args.quiet)
    seconds = report.seconds + fit_seconds
    rate = report.done / report.seconds if report.seconds else 0.0
    print(f"encoded {report.done} images ({rate:.1f} images/s), {report.skipped} already in {store}, "
          f"{len(report.failed)} failed; {seconds:.1f} s in all (PCA {fit_seconds:.1f} s)")
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}")
    return 0


def register(commands) -> None:
    parser = add_command(commands, "extract", run, "encode an image folder or a CSV manifest into a resumable store "
                         "of codes (and embeddings)", EXAMPLES)
    parser.add_argument("source", metavar="SOURCE", help="an image folder, or a CSV whose first column is 'path'")
    parser.add_argument("store", metavar="STORE", help="the store directory (created, or resumed)")
    add_encoder_options(parser)
    parser.add_argument("--encoder", default=None,
                        help="a fitted encoder file to use instead of learning a PCA (default: learn one)")
    add_runtime_options(parser)
    parser.add_argument("--chunk-size", type=positive_int, default=128, help="images per committed chunk file")
    parser.add_argument("--no-embedding", action="store_true", help="do not store the pooled embeddings")
    add_on_error_option(parser)
    add_quiet_option(parser)
