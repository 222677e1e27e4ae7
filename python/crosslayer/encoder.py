"""`CrossLayerEncoder`: images -> backbone layer pair -> PCA -> cross-layer pooling (floats or sign codes).

scikit-learn style: parameters in the constructor, `fit` learns the PCA of local features, `transform`/`encode` apply.
Images are file paths or HxWx3 uint8 arrays. The backbone runs in onnxruntime from a cached ONNX export.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from crosslayer.backbones.registry import get_backbone
from crosslayer.backbones.weights import describe_weights, weights_identity
from crosslayer.batches import ON_ERROR, BatchBuffers, batch_size_within_budget, check_batch_size, stream_batches
from crosslayer.codes import Codes
from crosslayer.compact import COMPACT, TWO_PLANE
from crosslayer.config import ENCODER_DEFAULTS, PRECISIONS
from crosslayer.errors import CrossLayerError, FormatError, UsageError
from crosslayer.formats import read_zip_document, write_zip_document
from crosslayer.images import RESIZE_POLICIES, check_side, prepare
from crosslayer.pca import CovarianceAccumulator, local_rows
from crosslayer.pooling import finish_pooled, pool
from crosslayer.stage_times import StageTimes

ENCODER_FORMAT = "crosslayer-encoder"
# Version 2: a `crosslayer.formats` zip document (checksummed meta and arrays), weights_id always recorded.
ENCODER_VERSION = 2
_META_KEYS = ("backbone", "layers", "side", "policy", "pca_dim", "weights", "weights_id", "seed", "Dk", "Dt")
# What must match to add codes to those an encoder made: the same network (these and its weights) and the same PCA.
COMPARED_SETTINGS = ("backbone", "layers", "side", "pca_dim", "policy")
# What a resumed run may choose anew: they change speed and memory, not the codes.
RUNTIME_OPTIONS = ("batch_size", "threads", "decode_workers", "cache")
# Settings that change the codes, added after files and identities existed: recorded in every file, compared like
# COMPARED_SETTINGS, and part of the identity only when not at these defaults (so older identities stay valid).
LATER_SETTINGS = {"precision": "fp32", "draft": False}
_UNRESOLVED = object()  # weights_id not computed yet
# The backbone's arithmetic. int8 is onnxruntime's static QDQ quantisation calibrated on the first
# CALIBRATION_IMAGES of the fit sample; its model is saved in the encoder file, and its precision and model hash are
# part of the identity, so int8 codes are never mixed with fp32 codes (nor with another calibration's).
CALIBRATION_IMAGES = 48


class EncoderFormatError(FormatError):
    """An encoder file is not one, is of another version, or is damaged."""


class EncoderMismatchError(CrossLayerError, ValueError):
    """Codes made with one encoder would be mixed with codes of another: ``differences`` says what differs."""

    def __init__(self, where, differences: list[str]):
        self.differences = list(differences)
        super().__init__(f"{where}: {'; '.join(self.differences)}")


class NotFittedError(CrossLayerError, RuntimeError):
    """The encoder's PCA has not been learnt yet: call fit() or load()."""


# The fit-set trap (issue 16; benchmarks/bench_fit_set.py): codes of the very images a PCA was fitted on lose most of
# their precision when the images are few for the components kept. The weakest components of a fit set are the
# directions in which those images have almost no energy; each code bit gives them the weight of the strongest. Images,
# not positions, count (an image's positions are strongly correlated). Measured on scene15 (8 classes, leave-one-out
# precision@1 of the code Gram, self-fit vs fit on other images): 64 images, Dt 320: 0.19 vs 0.70; Dt 32: 0.59 vs
# 0.73; Dt 16: 0.75 vs 0.73; 300 images, Dt 64: 0.78 vs 0.76; 300 images, full rotation: 0.66 vs 0.72. A fit that uses
# on more than half the images it is given (what `fit_transform`, or `index build` of a small collection, encodes)
# with fewer than 4 images per component is warned about. A fit on a smaller sample of a larger set is not: most of
# the collection is then encoded with a PCA fitted on other images (SMVS, full rotation fitted on 256 of 592 database
# images: mAP 0.486, above every reduced pca_dim: 0.335 at 64).
MIN_FIT_IMAGES_PER_COMPONENT = 4
# at least this many good images to fit on at all (a covariance of one image's positions is one image's texture)
MIN_FIT_IMAGES = 2


class FitError(CrossLayerError, ValueError):
    """Too few usable images to learn the PCA on; ``failures`` lists (path, reason) of the images skipped."""

    def __init__(self, message: str, failures):
        self.failures = list(failures)
        super().__init__(message)


@dataclass(frozen=True)
class Pass:
    """How images become network inputs, and how the network's outputs become what a batch yields.

    prepare(source) -> (3, H, W) float32 (one network input) or (m, 3, H, W) (m inputs: crops, regions); None: the
        encoder's own decode, resize (side, policy) and normalisation. Raises `ImageError` for a bad image.
    reduce(outputs) -> outputs, applied to each batch: the network's arrays are (n, ...) for one input per image and
        (n, m, ...) for m inputs per image; None yields them as they are.
    taps: backbone taps the network outputs (None: the encoder's layer pair); embedding: the pooled embedding too.
    input_side, inputs_per_image: the network input's side and count per image, for the memory budget (None: the
        encoder's side, 1); max_inputs: most network inputs run at once (None: as the memory budget allows).
    """

    prepare: Callable | None = None
    reduce: Callable | None = None
    taps: tuple | None = None
    embedding: bool = True
    input_side: int | None = None
    inputs_per_image: int = 1
    max_inputs: int | None = None


class CrossLayerEncoder:
    """Cross-convolutional-layer pooling on a pretrained backbone.

    backbone: registry name ("mobilenet_v2", "efficientnet_lite0", "vgg16", "vgg19", "alexnet").
    layers:   (layer t, layer t+1) tap names; default the backbone's pair.
    side:     images are resized to side x side (policy "square", "center-crop" or "pad").
    pca_dim:  PCA output dimension Dt (None: the full decorrelating rotation, as in the paper; the default).
              The fit-set trap: the sign codes of the very images the PCA was fitted on are fragile when they are
              few (the float representation is not). A fit set's weakest PCA directions are those in which its
              images have almost no energy; their codes give those near-empty directions the weight of the
              strongest, and nearest-neighbour search among them falls towards chance (scene15, 64 images, full
              rotation: precision@1 0.19 self-fitted vs 0.70 fitted on other images). So do not `fit` then `encode`
              the same small set: fit on other images of the same kind, or on at least 4 images per component, or
              keep fewer components (pca_dim = images / 4); `fit` warns when it uses more than half the images it
              is given and they are fewer. A fit on a small sample of a larger collection (`fit_images`) is safe:
              most of it is then encoded with a PCA fitted on other images.
    weights:  None (the pinned packaged weights), a state-dict file path, or "random" (untrained; tests only).
    logits:   also compute ImageNet logits in `activations` (for display).
    precision: "fp32" (the reference, default; onnxruntime), "bf16" (OpenVINO runs the fp32 export with bfloat16
              convolutions: `pip install crosslayer[openvino]`; needs no calibration, so a bf16 encoder may reuse an
              fp32 encoder's PCA) or "int8": the backbone quantised by onnxruntime, calibrated during `fit`; ~2.5x
              the fp32 session's speed on a CPU with VNNI, but ~18% of code signs differ from fp32's and SMVS mAP
              moved by more than its noise. Speeds and quality of each: benchmarks/results/extract.md.
    draft:    decode JPEGs of at least twice `side` at a reduced scale (`crosslayer.images.load_image`); faster on
              large photos, but ~4% of code signs differ from a full decode's (off by default).

    Threads: `threads` onnxruntime intra-op threads (OpenVINO's at bf16, in streams of one thread:
    `crosslayer.backbones.runtime.OPENVINO_STREAMS`) run the network and, after it on the same thread, the pooling
    kernel (its OpenMP threads take the network's slot; at bf16 `encode`, `transform` and image indexes run the PCA
    and the pooling inside OpenVINO's graph, and the kernel only finishes P); `decode_workers` threads decode the
    next batch meanwhile.
    onnxruntime's threads do not spin while idle (`OnnxBackbone`), so the decoders get the cores inference leaves.
    `stage_times_` sums the seconds of each stage over every run (`crosslayer.stage_times`).
    """

    def __init__(self,
                 backbone=ENCODER_DEFAULTS.backbone,
                 layers=ENCODER_DEFAULTS.layers,
                 side=ENCODER_DEFAULTS.side,
                 pca_dim=ENCODER_DEFAULTS.pca_dim,
                 policy=ENCODER_DEFAULTS.policy,
                 weights=None,
                 batch_size=ENCODER_DEFAULTS.batch_size,
                 threads=ENCODER_DEFAULTS.threads,
                 decode_workers=ENCODER_DEFAULTS.decode_workers,
                 fit_images=ENCODER_DEFAULTS.fit_images,
                 logits=False,
                 cache=None,
                 seed=ENCODER_DEFAULTS.seed,
                 draft=ENCODER_DEFAULTS.draft,
                 precision=ENCODER_DEFAULTS.precision):
        self.spec = get_backbone(backbone)
        self.backbone = self.spec.name
        self.layers = self.spec.check_pair(layers)
        self.side = check_side(side, self.spec.side_multiple)
        if policy not in RESIZE_POLICIES:
            raise UsageError(f"policy: expected one of {RESIZE_POLICIES}, got {policy!r}")
        dt_in = self.spec.channels[self.layers[0]]
        if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, (int, np.integer)) or not 1 <= pca_dim <= dt_in):
            raise UsageError(f"pca_dim: expected None or an integer in [1, {dt_in}], got {pca_dim!r}")
        self.pca_dim = None if pca_dim is None else int(pca_dim)
        self.policy = policy
        self.weights = None if weights is None else str(weights)
        self.batch_size = batch_size
        self.threads = threads
        self.decode_workers = decode_workers
        self.fit_images = fit_images
        self.logits = logits
        self.cache = cache
        self.seed = seed
        if not isinstance(draft, (bool, np.bool_)):
            raise UsageError(f"draft: expected True or False, got {draft!r}")
        self.draft = bool(draft)
        if precision not in PRECISIONS:
            raise UsageError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.int8_model_ = None  # the quantised backbone's ONNX bytes (precision "int8", after fit or load)
        self.stage_times_ = StageTimes()
        self.pca_ = None
        self.fit_failures_ = []  # (path, reason) of the images fit skipped
        self.fit_seconds_ = 0.0  # wall time of the last fit (part of a build's time)
        self._runners = {}
        self._batch_buffers = BatchBuffers()  # reused by activations from call to call
        self._model_source = None  # the backbone model given to `use_backbone_model` (None: the export)
        self._weights_id = _UNRESOLVED
        self._identity_cache = None  # (the pca_ tuple it was computed for, identity dict, digest)

    @property
    def weights_id(self) -> str | None:
        """The network weights' identity (`crosslayer.backbones.weights.weights_identity`): the sha256 of the weights
        file or "random:SEED"; for an encoder loaded from the file, the weights it was made with (None: a file from
        before they were recorded)."""
        if self._weights_id is _UNRESOLVED:
            self._weights_id = weights_identity(self.spec, self.weights, self.seed)
        return self._weights_id

    def _check_weights(self, where) -> None:
        """Refuses weights other than those the PCA (and every code made with this encoder) came from."""
        if self._weights_id is None:  # unrecorded: `load` has said so
            return
        actual = weights_identity(self.spec, self.weights, self.seed)
        if self._weights_id is _UNRESOLVED:
            self._weights_id = actual
        elif actual != self._weights_id:
            given = "the packaged weights" if self.weights is None else str(self.weights)
            raise EncoderMismatchError(where, [f"made with {describe_weights(self._weights_id)}, not {given} "
                                               f"({describe_weights(actual)}); pass the weights it was made with"])

    # ---- identity -----------------------------------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        """What makes this encoder's codes comparable with another's: backbone, layers, side, policy, pca_dim,
        weights_id and the sha256 of the PCA arrays (NotFittedError before fit/load)."""
        return dict(self._identity()[0])

    @property
    def identity_digest(self) -> str:
        """A 16-hex-digit digest of `identity`, stamped on every code this encoder makes (`Codes.identity`)."""
        return self._identity()[1]

    def _identity(self):
        self._check_fitted()
        if self._identity_cache is None or self._identity_cache[0] is not self.pca_:
            sha = hashlib.sha256()
            for array in self.pca_:
                sha.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
            identity = {**self.settings(), "weights_id": self.weights_id, "pca_sha256": sha.hexdigest()}
            identity.update({key: getattr(self, key) for key, default in LATER_SETTINGS.items()
                             if getattr(self, key) != default})
            if self.precision == "int8":
                identity["int8_model_sha256"] = hashlib.sha256(self.int8_model_).hexdigest()
            digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            self._identity_cache = (self.pca_, identity, digest)
        return self._identity_cache[1:]

    # ---- backbone ------------------------------------------------------------------------------------------------
    @property
    def Dk(self) -> int:
        return self.spec.channels[self.layers[1]]

    @property
    def Dt(self) -> int:
        return self.pca_dim if self.pca_dim is not None else self.spec.channels[self.layers[0]]

    def _backbone(self, taps=None, embedding=True):
        """The runner of one export (taps + embedding [+ logits]) at this encoder's precision, made once per encoder
        (`crosslayer.backbones.runtime.backbone_runner`: onnxruntime for fp32 and int8, OpenVINO for bf16)."""
        taps = tuple(self.layers if taps is None else taps)
        key = (taps, embedding)
        if key not in self._runners:
            from crosslayer.backbones.runtime import backbone_runner

            if self.precision == "int8":
                if key != (tuple(self.layers), True):
                    raise UsageError(f"precision: int8 covers this encoder's own layer pair {self.layers} with its "
                                     f"embedding, not taps {taps}; use an fp32 encoder for other taps")
                model = self._int8_model()
            else:  # bf16 runs the fp32 export, converted by OpenVINO when it is compiled
                model = self._fp32_export(taps, embedding)
            self._runners[key] = backbone_runner(model, self.precision, self.threads)
        return self._runners[key]

    def _pooling_backbone(self):
        """At bf16, the runner of this encoder's own export with the PCA and the cross-layer pooling appended to the
        graph (`crosslayer.backbones.runtime.GraphPooling`): it outputs POOLED and CHANNEL_MEAN instead of the two
        layers' maps (and the embedding [and logits] as they are). Remade when the PCA changes (a new fit).

        Why in the graph: there the two MatMuls (MobileNetV2 at side 448: ~200 MFLOP an image) run in bfloat16 with
        float32 accumulation: 1.5 core-ms an image with the core's finish, against 3.0 in the fused fp32 kernel (one
        thread), with ~0.1% of code signs changed and SMVS mAP unchanged (benchmarks/results/extract.md, part B)."""
        from crosslayer.backbones.runtime import GraphPooling, backbone_runner

        self._check_fitted()
        runner = self._runners.get("graph pooling")
        if runner is None or runner.pooling.mean is not self.pca_[0] or runner.pooling.projection is not self.pca_[1]:
            model = self._model_source if self._model_source is not None else self.backbone_model()
            pooling = GraphPooling(self.layers[0], self.layers[1], self.pca_[0], self.pca_[1])
            runner = self._runners["graph pooling"] = backbone_runner(model, self.precision, self.threads, pooling)
        return runner

    def _int8_model(self) -> bytes:
        if self.int8_model_ is None:
            raise NotFittedError("precision int8: the quantised backbone is calibrated by fit(images) (or read by "
                                 "CrossLayerEncoder.load)")
        return self.int8_model_

    def backbone_model(self) -> bytes:
        """The ONNX model `activations` runs (fp32 and bf16: the fp32 export, made now or found in the cache; int8: the
        quantised one calibrated by `fit`): with the encoder file, all a worker needs to encode images
        (`use_backbone_model`)."""
        if self.precision == "int8":
            return bytes(self._int8_model())
        return Path(self._fp32_export(tuple(self.layers), True)).read_bytes()

    def use_backbone_model(self, model) -> None:
        """Runs `activations` on `model` (this encoder's `backbone_model()`, as bytes or a file shipped to a worker),
        so the worker needs neither torch nor the weights. Threads: this encoder's `threads`; runtime: its precision's."""
        from crosslayer.backbones.runtime import backbone_runner

        self._model_source = model
        self._runners.pop("graph pooling", None)
        self._runners[(tuple(self.layers), True)] = backbone_runner(model, self.precision, self.threads)

    def _fp32_export(self, taps, embedding):
        from crosslayer.backbones.export import export

        # the file recorded (or given) may have been replaced since the PCA was learnt
        self._check_weights(f"{self.backbone} encoder")
        return export(self.spec, taps, self.weights, with_embedding=embedding, with_logits=self.logits,
                      cache=self.cache, seed=self.seed)

    def _calibrate_int8(self, images, on_error):
        """The int8 backbone's bytes, calibrated on the first CALIBRATION_IMAGES usable images (bad ones skipped
        with on_error="skip")."""
        from crosslayer.backbones.export import quantize_int8
        from crosslayer.images import ImageError

        inputs = []
        for source in images:
            if len(inputs) == CALIBRATION_IMAGES:
                break
            try:
                inputs.append(self._prepare(source))
            except ImageError:
                if on_error == "raise":
                    raise
        if not inputs:
            raise FitError("images: no usable image to calibrate the int8 backbone on", [])
        return quantize_int8(self._fp32_export(tuple(self.layers), True), np.stack(inputs))

    def _prepare(self, source, out=None):
        return prepare(source, self.side, self.policy, self.spec.mean, self.spec.std, draft=self.draft,
                       stage_times=self.stage_times_, out=out)

    def load_pixels(self, images) -> np.ndarray:
        """(n, side, side, 3) uint8 RGB: the images (file paths or HxWx3 uint8 arrays) decoded and resized by this
        encoder's policy, before normalisation — the `images` input of its exported ONNX graph
        (`crosslayer.onnx_encoder.export_encoder_onnx`). Raises `ImageError` naming a bad image."""
        from crosslayer.images import load_resized

        # decoded and resized exactly as `_prepare` does (draft included), so the graph sees encode's pixels
        decoded = [load_resized(source, self.side, self.policy, draft=self.draft) for source in images]
        return np.stack(decoded) if decoded else np.zeros((0, self.side, self.side, 3), np.uint8)

    def activations(self, images, on_error="raise", pass_: Pass | None = None, progress=False, desc="encode",
                    for_pooling=False):
        """Yields `ActivationBatch`es: outputs[layer t], outputs[layer t+1] (n, C, h, w), outputs["embedding"] (n, C)
        and, with logits=True, outputs["logits"] — the raw backbone maps for other uses (evaluation, inspection).

        for_pooling: the outputs only go to `pool_batch` (and the embedding, logits are read): at precision bf16 the
        PCA and the pooling then run in OpenVINO's graph, and outputs["pooled"] (n, Dk, Dt) and
        outputs["channel_mean"] (n, Dk) replace the two layers' maps (`_pooling_backbone`); other precisions, and
        any `pass_`, yield the maps as always. "codes": as True, for `pool_batch(outputs, "codes")` only: at bf16
        each image's P is finished into compact codes as soon as OpenVINO has computed it, while it is still in
        the core's cache, and outputs["code_bits"] replaces outputs["pooled"] (`_finish_codes`).

        pass_: a `Pass` for other inputs (crops, regions, other sides) or other taps, reduced to rows by its hook;
        every image reaches the network this way. Batches are lowered to the memory budget
        (`crosslayer.batches.BATCH_MEMORY_BUDGET`). progress: a tqdm bar over the images (desc names it)."""
        if on_error not in ON_ERROR:
            raise UsageError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
        check_batch_size(self.batch_size)
        if not (isinstance(for_pooling, (bool, np.bool_)) or (isinstance(for_pooling, str) and for_pooling == "codes")):
            raise UsageError(f"for_pooling: expected True, False or 'codes', got {for_pooling!r}")
        step = pass_ or Pass()
        finish = None
        if for_pooling and pass_ is None and self.precision == "bf16":
            runner = self._pooling_backbone()
            finish = self._finish_codes if for_pooling == "codes" else None
        else:
            runner = self._backbone(step.taps, step.embedding)
        side = step.input_side or self.side
        per_input = self.spec.bytes_per_input(side)
        # the batch holds inputs_per_image inputs per image; the network runs at most max_inputs of them at once
        inputs_at_once = batch_size_within_budget(max(self.batch_size, step.max_inputs or 0) * step.inputs_per_image,
                                                  per_input, f"side {side} with {self.backbone}")
        if step.max_inputs:
            inputs_at_once = min(inputs_at_once, step.max_inputs)
        batch_size = max(1, min(self.batch_size, inputs_at_once // step.inputs_per_image))

        def run(stacked):
            if stacked.ndim == 5:  # (n, m, 3, H, W): m inputs per image, run in chunks, outputs (n, m, ...)
                n, m = stacked.shape[:2]
                flat = stacked.reshape((n * m,) + stacked.shape[2:])
                parts = [runner.run(flat[i : i + inputs_at_once]) for i in range(0, len(flat), inputs_at_once)]
                outputs = {name: np.concatenate([part[name] for part in parts]).reshape((n, m) + parts[0][name].shape[1:])
                           for name in parts[0]}
            else:
                outputs = runner.run(stacked, finish=finish) if finish is not None else runner.run(stacked)
            return step.reduce(outputs) if step.reduce is not None else outputs

        # the encoder's own inputs are prepared straight into their batch rows; a pass's own prepare returns arrays
        start = None
        if pass_ is None and hasattr(runner, "start"):  # OpenVINO: the next batch starts before this one is waited for
            def start(stacked):
                return runner.start(stacked, finish=finish)

        batches = stream_batches(images, step.prepare or self._prepare, run, batch_size, self.decode_workers, on_error,
                                 stage_times=self.stage_times_,
                                 input_shape=None if step.prepare else (3, self.side, self.side),
                                 buffers=self._batch_buffers, start=start)
        if not progress:
            return batches
        return _with_progress(batches, images, desc)

    # ---- PCA -----------------------------------------------------------------------------------------------------
    def fit(self, images, y=None, on_error="raise", progress=False):
        """Learns the PCA of layer t's local features on (a seeded sample of at most fit_images of) the images.

        on_error="skip": images that cannot be used are left out and listed in `fit_failures_` as (path, reason),
        all of them; the PCA is learnt on the others (`FitError` if fewer than two remain). "raise": the first
        bad image raises `ImageError`. progress: a tqdm bar. `fit_seconds_` is the fit's wall time. A UserWarning
        says when the images are fewer than layer t's channels: too few for a meaningful full rotation."""
        begin = time.perf_counter()
        images = list(images)
        if not images:
            raise UsageError("images: expected at least one image to fit on")
        given = len(images)
        if self.fit_images is not None and len(images) > self.fit_images:
            chosen = np.sort(np.random.default_rng(self.seed).choice(len(images), self.fit_images, replace=False))
            images = [images[i] for i in chosen]
        if self.precision == "int8":
            self.pca_ = None  # the PCA is learnt anew on the newly calibrated backbone's activations
            self.int8_model_ = self._calibrate_int8(images, on_error)
            self._runners.clear()
        channels = self.spec.channels[self.layers[0]]
        accumulator = CovarianceAccumulator(channels)
        failures, used = [], 0
        for batch in self.activations(images, on_error=on_error, progress=progress, desc="fit PCA"):
            failures += [(error.path, error.reason) for _, error in batch.errors]
            if batch.positions:
                accumulator.add(local_rows(batch.outputs[self.layers[0]]))
                used += len(batch.positions)
        if used < MIN_FIT_IMAGES:
            listed = "; ".join(f"{path}: {reason}" for path, reason in failures)
            raise FitError(f"images: {used} usable image(s) of {len(images)} to fit the PCA on, need at least "
                           f"{MIN_FIT_IMAGES}" + (f" (skipped {listed})" if failures else ""), failures)
        components = self.pca_dim or channels
        enough = MIN_FIT_IMAGES_PER_COMPONENT * components
        if used < enough and 2 * used > given:
            kept = (f"a full PCA rotation of {channels} channels" if self.pca_dim is None
                    else f"{components} PCA components")
            warnings.warn(f"fit: {used} images for {kept} ({self.layers[0]}): the codes of these very images would "
                          f"lose most of their precision (their weakest directions are noise, each sign bit weighs as "
                          f"much as the strongest); fit on at least {enough} images, or on other images of the same "
                          f"kind, or set a smaller pca_dim (at most {max(1, used // MIN_FIT_IMAGES_PER_COMPONENT)})",
                          UserWarning, stacklevel=2)
        mean, projection = accumulator.pca(self.pca_dim)
        self.pca_ = (mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32))
        self.fit_failures_ = failures
        self.fit_seconds_ = time.perf_counter() - begin
        return self

    def _finish_codes(self, outputs: dict) -> dict:
        """One OpenVINO request's outputs of the pooling graph with POOLED finished into compact code bits
        (CODE_BITS): called on OpenVINO's thread as the request completes (`OpenVinoBackbone.run`), while its P is
        still in cache; one thread, since the other streams keep the other cores busy."""
        from crosslayer.backbones.runtime import CHANNEL_MEAN, CODE_BITS, POOLED

        kept = {name: data for name, data in outputs.items() if name != POOLED}
        # not scanned for NaN/Inf here: the kernel refuses non-finite pooled values itself
        kept[CODE_BITS] = finish_pooled(outputs[POOLED], outputs[CHANNEL_MEAN], output="codes", num_threads=1,
                                        check_finite=False, layout=COMPACT).bits
        return kept

    def _check_fitted(self):
        if self.pca_ is None:
            raise NotFittedError("this CrossLayerEncoder is not fitted: call fit(images) or CrossLayerEncoder.load(path)")

    # ---- representations -----------------------------------------------------------------------------------------
    def pool_batch(self, outputs: dict, output: str = "codes"):
        """Cross-layer pooling of one activations batch (`output` as in `crosslayer.pool`), or its last step when the
        graph pooled already (outputs["pooled"]: `activations(for_pooling=True)` at bf16). Codes come in the
        compact layout, packed so by the kernel (`Codes.compact(lossy=True)` of the 2-plane codes, bit for bit; an
        exact zero inside a live channel, never seen on real images, is coded +1 as the layout's contract says)."""
        from crosslayer.backbones.runtime import CHANNEL_MEAN, CODE_BITS, POOLED

        self._check_fitted()
        layout = COMPACT if output == "codes" else TWO_PLANE
        with self.stage_times_.timing("pooling"):
            if CODE_BITS in outputs:  # finished in the backbone's requests (`activations(for_pooling="codes")`)
                if output != "codes":
                    raise UsageError(f"output: these outputs were finished into codes (activations(for_pooling="
                                     f"'codes')), so only 'codes' can come out of them, not {output!r}")
                pooled = Codes._from_valid_bits(outputs[CODE_BITS], np.asarray(outputs[CHANNEL_MEAN]), self.Dt)
            elif POOLED in outputs:  # pooled in the backbone's graph (`activations(for_pooling=True)` at bf16)
                # not scanned for NaN/Inf here: the kernel refuses non-finite pooled values itself
                pooled = finish_pooled(outputs[POOLED], outputs[CHANNEL_MEAN], output=output, num_threads=self.threads,
                                       check_finite=False, layout=layout)
            else:
                pooled = pool(outputs[self.layers[0]], outputs[self.layers[1]], self.pca_, output=output,
                              num_threads=self.threads, layout=layout)
        if output == "codes":
            pooled.identity = self.identity_digest
        return pooled

    def transform(self, images) -> np.ndarray:
        """(n, Dk*Dt) float32 representations (1.6 MB an image for the default pair: prefer encode for many)."""
        self._check_fitted()
        parts = [self.pool_batch(batch.outputs, "float") for batch in self.activations(images, for_pooling=True)]
        return np.concatenate(parts) if parts else np.zeros((0, self.Dk * self.Dt), np.float32)

    def encode(self, images) -> Codes:
        """Sign codes (compact layout) with per-channel mean guidance activations."""
        self._check_fitted()
        parts = [self.pool_batch(batch.outputs, "codes") for batch in self.activations(images, for_pooling="codes")]
        return Codes.concatenate(parts) if parts else Codes.empty(self.Dk, self.Dt, self.identity_digest, "compact")

    def fit_transform(self, images, y=None):
        images = list(images)
        return self.fit(images).transform(images)

    # ---- file format ---------------------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The COMPARED_SETTINGS (without the weights, whose identity may take hashing a file)."""
        return {"backbone": self.backbone, "layers": list(self.layers), "side": self.side, "pca_dim": self.pca_dim,
                "policy": self.policy}

    def config(self) -> dict:
        return {**self.settings(), "weights": self.weights, "weights_id": self.weights_id, "seed": self.seed,
                "Dk": self.Dk, "Dt": self.Dt, **{key: getattr(self, key) for key in LATER_SETTINGS}}

    def differences(self, made: dict) -> list[str]:
        """How this (requested) encoder differs from the one whose `config()` is `made` — [] when codes of both can
        be mixed. The weights are compared (a file hashed) only when the settings match; unrecorded weights are not."""
        wanted = self.settings()
        found = [f"{key} {made[key]!r} (requested {wanted[key]!r})" for key in COMPARED_SETTINGS if made[key] != wanted[key]]
        for key, default in LATER_SETTINGS.items():  # files from before they existed had the defaults
            if made.get(key, default) != getattr(self, key):
                found.append(f"{key} {made.get(key, default)!r} (requested {getattr(self, key)!r})")
        if not found and made.get("weights_id") is not None and made["weights_id"] != self.weights_id:
            given = "the packaged weights" if self.weights is None else f"{self.weights}"
            found.append(f"{describe_weights(made['weights_id'])} (requested {given}: {describe_weights(self.weights_id)})")
        return found

    def save(self, path) -> None:
        """Writes the fitted encoder atomically (`crosslayer.formats` zip document: meta + PCA arrays, checksummed)."""
        self._check_fitted()
        body = {**self.config(), "identity": self.identity_digest}
        arrays = {"pca_mean": self.pca_[0], "pca_projection": self.pca_[1]}
        if self.precision == "int8":
            arrays["int8_model"] = np.frombuffer(self.int8_model_, np.uint8)
        write_zip_document(path, ENCODER_FORMAT, ENCODER_VERSION, body, arrays)

    @staticmethod
    def read_meta(path) -> dict:
        """The settings recorded in an encoder file (its arrays are not read); EncoderFormatError if it is not one."""
        body, _ = read_zip_document(path, ENCODER_FORMAT, ENCODER_VERSION, "crosslayer encoder file",
                                    EncoderFormatError, arrays=False)
        _check_meta(body, path)
        return {"format": ENCODER_FORMAT, **body}

    @classmethod
    def load(cls, path, **runtime_options) -> "CrossLayerEncoder":
        """A fitted encoder from `save`; runtime_options (batch_size, threads, logits, cache, weights...) override.

        Weights given here (a moved file) must be the ones recorded in the file (EncoderMismatchError otherwise)."""
        path = Path(path)
        meta, arrays = read_zip_document(path, ENCODER_FORMAT, ENCODER_VERSION, "crosslayer encoder file",
                                         EncoderFormatError)
        _check_meta(meta, path)
        params = {key: meta[key] for key in ("backbone", "side", "pca_dim", "policy", "weights", "seed")}
        params["layers"] = tuple(meta["layers"])
        params.update({key: meta.get(key, default) for key, default in LATER_SETTINGS.items()})
        params.update(runtime_options)
        try:
            encoder = cls(**params)
        except (ValueError, KeyError, TypeError) as error:
            if runtime_options:
                raise
            raise EncoderFormatError(f"{path}: damaged encoder file (settings refused: {error})") from None
        encoder._weights_id = meta["weights_id"]
        if "weights" in runtime_options:
            encoder._check_weights(path)
        mean, projection = arrays.get("pca_mean"), arrays.get("pca_projection")
        dt_in = encoder.spec.channels[encoder.layers[0]]
        if mean is None or projection is None or mean.shape != (dt_in,) or projection.shape != (dt_in, encoder.Dt):
            raise EncoderFormatError(f"{path}: PCA arrays do not match the encoder (damaged encoder file)")
        encoder.pca_ = (mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32))
        if encoder.precision == "int8":
            model = arrays.get("int8_model")
            if model is None or model.dtype != np.uint8 or model.ndim != 1:
                raise EncoderFormatError(f"{path}: damaged encoder file (precision int8 without its int8 model)")
            encoder.int8_model_ = model.tobytes()
        if encoder.identity_digest != meta["identity"]:
            raise EncoderFormatError(f"{path}: damaged encoder file (identity {encoder.identity_digest} of its "
                                     f"contents differs from the {meta['identity']} recorded)")
        return encoder

    def with_precision(self, precision: str) -> "CrossLayerEncoder":
        """This fitted encoder's copy (the same network, weights, PCA and runtime options) whose backbone runs at
        another precision that needs no calibration: "fp32" or "bf16". Its codes carry another identity (they are
        never mixed with this encoder's), but are comparable sign by sign, since the PCA is the same."""
        self._check_fitted()
        if precision not in ("fp32", "bf16") or self.precision not in ("fp32", "bf16"):
            raise UsageError(f"precision: with_precision converts between 'fp32' and 'bf16' (neither is calibrated), "
                             f"not {self.precision!r} to {precision!r}; fit an int8 encoder on images instead")
        params = {key: getattr(self, key) for key in ("backbone", "layers", "side", "pca_dim", "policy", "weights",
                                                      "batch_size", "threads", "decode_workers", "fit_images",
                                                      "logits", "cache", "seed", "draft")}
        copy = type(self)(**params, precision=precision)
        copy.pca_, copy._weights_id = self.pca_, self._weights_id
        return copy

    @classmethod
    def load_for_resume(cls, path, requested: "CrossLayerEncoder") -> "CrossLayerEncoder":
        """The encoder saved at `path`, to add codes to those it made, provided `requested` is the same encoder
        (EncoderMismatchError naming each difference otherwise; a fitted `requested` must have the same PCA too).
        It takes requested's RUNTIME_OPTIONS and weights file (checked to be the same weights: it may have moved)."""
        found = requested.differences(cls.read_meta(path))
        if found:
            raise EncoderMismatchError(path, found)
        stored = cls.load(path, weights=requested.weights, **{key: getattr(requested, key) for key in RUNTIME_OPTIONS})
        stored.stage_times_ = requested.stage_times_  # the caller's profile sees the work done by the stored encoder
        if requested.pca_ is not None and not all(np.array_equal(a, b) for a, b in zip(requested.pca_, stored.pca_)):
            raise EncoderMismatchError(path, ["another PCA (the same settings, fitted separately)"])
        return stored


def _with_progress(batches, images, desc):
    """The batches, counted on a tqdm bar in images (good and failed)."""
    from tqdm.auto import tqdm

    total = len(images) if hasattr(images, "__len__") else None
    with tqdm(total=total, unit="img", desc=desc) as bar:
        for batch in batches:
            bar.update(len(batch.positions) + len(batch.errors))
            yield batch


def _check_meta(meta: dict, path) -> None:
    """The recorded settings have the types the encoder expects (a checksummed file can still be hand-made)."""
    missing = [key for key in (*_META_KEYS, "identity") if key not in meta]
    if missing:
        raise EncoderFormatError(f"{path}: damaged encoder file (missing {', '.join(missing)})")
    layers = meta["layers"]
    if (not isinstance(meta["backbone"], str) or not isinstance(layers, list) or len(layers) != 2
            or not all(isinstance(layer, str) for layer in layers) or not isinstance(meta["identity"], str)
            or not (meta["weights_id"] is None or isinstance(meta["weights_id"], str))):
        raise EncoderFormatError(f"{path}: damaged encoder file (settings of the wrong type)")
