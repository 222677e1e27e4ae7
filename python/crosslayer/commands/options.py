"""What every command shares: the parser class and help layout, encoder and runtime options, list parsing, checks."""

from __future__ import annotations

import argparse
import dataclasses

from crosslayer.config import (ENCODER_DEFAULTS, MAX_SIDE, MIN_SIDE, PRECISIONS, RETRIEVAL_DEFAULTS, EncoderConfig,
                               retrieval_encoder_settings)
from crosslayer.errors import UsageError

ON_ERROR_CHOICES = ("skip", "raise")


class CommandUsageError(UsageError):
    """A command line the parser refuses; `prog` names the (sub)command, as in 'crosslayer index build'."""

    def __init__(self, prog: str, message: str):
        self.prog = prog
        super().__init__(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless its help already says what it is) and keeps the examples' layout."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        if isinstance(action.default, (tuple, list)):  # as typed on the command line, not as a Python tuple
            listed = ",".join(format(value, "g") if isinstance(value, float) else str(value) for value in action.default)
            return f"{text} (default: {listed.replace('%', '%%')})"
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are `UsageError`s: `main` prints them as one line, like every other error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise CommandUsageError(self.prog, f"{message} (see '{self.prog} --help')")


def add_command(subcommands, name: str, run, summary: str, examples: str) -> Parser:
    """A subcommand parser whose help ends with usage examples; `run(args)` does the work, returning an exit status."""
    parser = subcommands.add_parser(name, help=summary, description=summary, epilog=f"examples:\n{examples.rstrip()}")
    parser.set_defaults(run=run, prog=parser.prog)
    return parser


def subcommands(parser: argparse.ArgumentParser, dest: str):
    return parser.add_subparsers(dest=dest, required=True, metavar="COMMAND", parser_class=Parser)


# ---- list parsing --------------------------------------------------------------------------------------------------

def comma_list(convert, what: str):
    """An argparse type: 'a,b,c' -> a tuple of `convert`ed parts (at least one)."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one of comma-separated {what}, got {text!r}")
        return values

    parse.__name__ = f"comma-separated {what}"
    return parse


comma_ints = comma_list(int, "integers")
comma_floats = comma_list(float, "numbers")


def bounded_int(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            expected = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {expected}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = bounded_int(1)


class _NotGiven:
    """The default of an option whose value depends on others (argparse converts string defaults, so not a str)."""

    def __repr__(self) -> str:
        return "not given"


NOT_GIVEN = _NotGiven()


def retrieval_defaults_text() -> str:
    """The retrieval defaults, for --help."""
    return "; ".join(f"{backbone}: {' '.join(chosen.layers)} at pca_dim {chosen.pca_dim or 'full'}"
                     for backbone, chosen in sorted(RETRIEVAL_DEFAULTS.items()))


def pca_dim(text: str) -> int | None:
    """--pca-dim: a positive integer, or 'full' (None: the full rotation)."""
    if text.strip().lower() == "full":
        return None
    return positive_int(text)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def channel_count(text: str) -> int | None:
    """An argparse type: a number of guidance channels, or 'all' (None); checked against Dk once the encoder is known."""
    if text == "all":
        return None
    try:
        return bounded_int(1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'all', got {text!r}") from None


class LayerPair(argparse.Action):
    """`--layers A B`; the comma form `--layers A,B` is accepted too."""

    def __call__(self, parser, namespace, values, option_string=None):
        parts = [part.strip() for value in values for part in value.split(",")]
        if len(parts) != 2 or not all(parts):
            raise argparse.ArgumentError(self, "expected two tap names 'LAYER_T LAYER_T1' (or 'LAYER_T,LAYER_T1'), "
                                               f"got {' '.join(values)!r}")
        setattr(namespace, self.dest, tuple(parts))


# ---- option groups -------------------------------------------------------------------------------------------------

def add_network_options(parser, defaults: bool = True, backbones=None, retrieval: bool = False) -> None:
    """--backbone, --layers, --weights; with defaults=False they default to None (taken from an index or file).
    retrieval: --layers defaults to the backbone's RETRIEVAL_DEFAULTS pair (see `encoder_config`)."""
    from crosslayer.backbones.registry import BACKBONES

    parser.add_argument("--backbone", default=ENCODER_DEFAULTS.backbone if defaults else None,
                        choices=sorted(backbones or BACKBONES),
                        help="the network" + ("" if defaults else f" (default: {ENCODER_DEFAULTS.backbone})"))
    default = (f"the retrieval pair ({retrieval_defaults_text()}), else the backbone's pair" if retrieval
               else "the backbone's pair")
    parser.add_argument("--layers", nargs="+", action=LayerPair, default=None, metavar="LAYER",
                        help="tap names of layer t and of a later guidance layer at the same stride, e.g. "
                             f"'features.16 features.17' (default: {default})")
    add_weights_option(parser)


def add_weights_option(parser, recorded: bool = False) -> None:
    if recorded:
        text = "a moved state-dict file replacing the one recorded at build time (checked against it) " \
               "(default: the weights recorded)"
    else:
        text = "a state-dict file (.pth), or 'random' (untrained; tests only) (default: the pinned packaged weights)"
    parser.add_argument("--weights", default=None, help=text)


def add_input_options(parser, defaults: bool = True, policy: bool = True) -> None:
    """--side, --policy (with defaults=False: None, taken from an index or file)."""
    from crosslayer.backbones.registry import BACKBONES
    from crosslayer.images import RESIZE_POLICIES

    multiples = ", ".join(f"{name}: {spec.side_multiple}" for name, spec in sorted(BACKBONES.items())
                          if spec.side_multiple > 1)
    parser.add_argument("--side", type=bounded_int(MIN_SIDE, MAX_SIDE),
                        default=ENCODER_DEFAULTS.side if defaults else None,
                        help=f"images are resized to SIDE x SIDE pixels, {MIN_SIDE}..{MAX_SIDE} and a multiple the "
                             f"backbone needs ({multiples})" + ("" if defaults else
                                                                f" (default: {ENCODER_DEFAULTS.side})"))
    if policy:
        parser.add_argument("--policy", default=ENCODER_DEFAULTS.policy if defaults else None, choices=RESIZE_POLICIES,
                            help="how an image becomes square" + ("" if defaults else
                                                                  f" (default: {ENCODER_DEFAULTS.policy})"))


def add_pca_options(parser, fit_images_help: str = "images sampled (seeded) to learn the PCA on",
                    retrieval: bool = False) -> None:
    """--pca-dim, --fit-images. retrieval: --pca-dim defaults to the RETRIEVAL_DEFAULTS of the pair (see
    `encoder_config`)."""
    default = (f"{retrieval_defaults_text()}; other pairs: {ENCODER_DEFAULTS.pca_dim or 'full'}" if retrieval
               else f"{ENCODER_DEFAULTS.pca_dim or 'full'}")
    parser.add_argument("--pca-dim", type=pca_dim, default=NOT_GIVEN if retrieval else ENCODER_DEFAULTS.pca_dim,
                        help="PCA output dimension Dt, or 'full': the full decorrelating rotation of the paper "
                             f"(default: {default}); fewer components when the images indexed are the few the PCA "
                             "is fitted on (fewer than 4 a component)")
    parser.add_argument("--fit-images", type=positive_int, default=ENCODER_DEFAULTS.fit_images, help=fit_images_help)


def add_encoder_options(parser, retrieval: bool = False) -> None:
    """Everything that decides what an encoder computes; retrieval: --layers and --pca-dim default to the
    backbone's RETRIEVAL_DEFAULTS (the commands that build image indexes)."""
    add_network_options(parser, retrieval=retrieval)
    add_input_options(parser)
    add_pca_options(parser, retrieval=retrieval)
    parser.set_defaults(retrieval_defaults=retrieval)


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=bounded_int(0), default=ENCODER_DEFAULTS.threads,
                        help="onnxruntime and pooling threads; 0: all cores")


def add_runtime_options(parser, decode_workers: bool = True) -> None:
    """What changes speed and memory, never the results."""
    parser.add_argument("--batch-size", type=positive_int, default=ENCODER_DEFAULTS.batch_size,
                        help="images per backbone run")
    add_threads_option(parser)
    if decode_workers:
        parser.add_argument("--decode-workers", type=positive_int, default=ENCODER_DEFAULTS.decode_workers,
                            help="threads decoding and resizing images ahead of the backbone")


def add_precision_options(parser) -> None:
    """--precision and --draft: faster ways to encode that change the codes (recorded in the encoder)."""
    parser.add_argument("--precision", default=ENCODER_DEFAULTS.precision, choices=PRECISIONS,
                        help="the backbone's arithmetic: fp32 (the reference), bf16 (OpenVINO: pip install "
                             "'crosslayer[openvino]') or int8 (quantised, calibrated on the PCA sample); both "
                             "faster, codes differ from fp32's")
    parser.add_argument("--draft", action="store_true",
                        help="decode JPEGs of at least twice --side at a reduced scale (faster on large photos; "
                             "~4%% of code signs differ from a full decode's)")


def add_profile_option(parser) -> None:
    parser.add_argument("--profile", action="store_true",
                        help="print the seconds spent in each stage (decode, resize, inference, pooling, writing...)")


def add_on_error_option(parser) -> None:
    parser.add_argument("--on-error", default="skip", choices=ON_ERROR_CHOICES,
                        help="a bad image (unreadable, empty, too large): record it and go on, or stop there")


def added_summary(added: int, skipped: int, recorded_bad: int, failed: int) -> str:
    """The first words of an indexing run's summary line: what it encoded, left out and could not use."""
    earlier = f", {recorded_bad} recorded as bad earlier" if recorded_bad else ""
    return f"indexed {added} images ({skipped} already there{earlier}, {failed} failed)"


def add_quiet_option(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars (default: shown)")


# ---- from options to objects ---------------------------------------------------------------------------------------

def check_side(backbone: str, side: int) -> None:
    """--side against the backbone's input multiple, before any network is built."""
    from crosslayer.backbones.registry import get_backbone

    multiple = get_backbone(backbone).side_multiple
    if side % multiple:
        below = max(MIN_SIDE, side // multiple * multiple)
        raise UsageError(f"--side: {backbone} needs a multiple of {multiple}, got {side} (try {below})")


def encoder_config(args) -> EncoderConfig:
    """The EncoderConfig the options describe (options a command lacks keep their defaults); --side checked. In a
    retrieval command (`add_encoder_options(retrieval=True)`) --layers and --pca-dim not given come from
    `RETRIEVAL_DEFAULTS`."""
    given = {name: getattr(args, name) for name in EncoderConfig.__dataclass_fields__ if hasattr(args, name)}
    if getattr(args, "retrieval_defaults", False):
        given_pca_dim = given["pca_dim"] is not NOT_GIVEN
        given["layers"], given["pca_dim"] = retrieval_encoder_settings(
            given["backbone"], given["layers"], given["pca_dim"] if given_pca_dim else ENCODER_DEFAULTS.pca_dim,
            given_pca_dim)
    config = EncoderConfig(**given)
    check_side(config.backbone, config.side)
    return config


def build_encoder(args, **extra):
    """A new (unfitted) encoder from the encoder and runtime options."""
    from crosslayer.encoder import CrossLayerEncoder

    # EncoderConfig's fields are CrossLayerEncoder's keywords
    return CrossLayerEncoder(**dataclasses.asdict(encoder_config(args)), weights=args.weights, **extra)


def runtime_options(args) -> dict:
    """The runtime options given, as keywords of `CrossLayerEncoder.load` / `ImageIndex.open`."""
    names = ("batch_size", "threads", "decode_workers")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def image_sources(values, option: str) -> list[str]:
    """Image paths from image folders (their manifest.csv when they have one), CSV manifests (first column 'path')
    and image files, in order; a missing path or no image at all is a UsageError naming `option`."""
    from pathlib import Path

    from crosslayer.retrieval.datasets import image_paths

    paths = []
    for value in values:
        path = Path(value)
        if not path.exists():
            raise UsageError(f"{option}: {value} does not exist (expected an image folder, a CSV manifest or an image)")
        if path.is_file() and path.suffix.lower() != ".csv":
            paths.append(str(path.resolve()))
        else:
            paths.extend(image_paths(path))
    if not paths:
        raise UsageError(f"{option}: no images found in {', '.join(map(str, values))}")
    return paths
