"""`CrossLayerEncoder`: images -> backbone layer pair -> PCA -> cross-layer pooling (floats or sign codes).

scikit-learn style: parameters in the constructor, `fit` learns the PCA of local features, `transform`/`encode` apply.
Images are file paths or HxWx3 uint8 arrays. The backbone runs in onnxruntime from a cached ONNX export.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from crosslayer.backbones.registry import get_backbone
from crosslayer.backbones.weights import describe_weights, weights_identity
from crosslayer.batches import stream_batches
from crosslayer.codes import Codes
from crosslayer.errors import CrossLayerError, FormatError
from crosslayer.formats import read_zip_document, write_zip_document
from crosslayer.images import RESIZE_POLICIES, check_side, prepare
from crosslayer.pooling import pool

ENCODER_FORMAT = "crosslayer-encoder"
# Version 2: a `crosslayer.formats` zip document (checksummed meta and arrays), weights_id always recorded.
ENCODER_VERSION = 2
_META_KEYS = ("backbone", "layers", "side", "policy", "pca_dim", "weights", "weights_id", "seed", "Dk", "Dt")
# What must match to add codes to those an encoder made: the same network (these and its weights) and the same PCA.
COMPARED_SETTINGS = ("backbone", "layers", "side", "pca_dim", "policy")
# What a resumed run may choose anew: they change speed and memory, not the codes.
RUNTIME_OPTIONS = ("batch_size", "threads", "decode_workers", "cache")
_UNRESOLVED = object()  # weights_id not computed yet


class EncoderFormatError(FormatError):
    """An encoder file is not one, is of another version, or is damaged."""


class EncoderMismatchError(CrossLayerError, ValueError):
    """Codes made with one encoder would be mixed with codes of another: ``differences`` says what differs."""

    def __init__(self, where, differences: list[str]):
        self.differences = list(differences)
        super().__init__(f"{where}: {'; '.join(self.differences)}")


class NotFittedError(CrossLayerError, RuntimeError):
    """The encoder's PCA has not been learnt yet: call fit() or load()."""


class CovarianceAccumulator:
    """Mean and covariance of feature rows, accumulated batch by batch in float64."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        self.count += rows.shape[0]
        self.total += rows.sum(axis=0)
        self.outer += rows.T @ rows

    def pca(self, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`crosslayer.reference.pca_fit` semantics: components by decreasing variance, largest coefficient positive."""
        if self.count < 2:
            raise ValueError("fit: need at least two local feature rows to learn a PCA")
        mean = self.total / self.count
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        eigvals, eigvecs = np.linalg.eigh(cov)
        eigvecs = eigvecs[:, np.argsort(eigvals)[::-1]]
        k = cov.shape[0] if n_components is None else n_components
        proj = eigvecs[:, :k]
        flip = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(k)])
        flip[flip == 0] = 1
        return mean, proj * flip


def _local_rows(local: np.ndarray) -> np.ndarray:
    n, dt = local.shape[:2]
    return local.reshape(n, dt, -1).transpose(0, 2, 1).reshape(-1, dt)


class CrossLayerEncoder:
    """Cross-convolutional-layer pooling on a pretrained backbone.

    backbone: registry name ("mobilenet_v2", "efficientnet_lite0", "vgg16", "vgg19", "alexnet").
    layers:   (layer t, layer t+1) tap names; default the backbone's pair.
    side:     images are resized to side x side (policy "square", "center-crop" or "pad").
    pca_dim:  PCA output dimension Dt (None: full decorrelating rotation, as in the paper).
    weights:  None (the pinned packaged weights), a state-dict file path, or "random" (untrained; tests only).
    logits:   also compute ImageNet logits in `activations` (for display).
    """

    def __init__(self, backbone="mobilenet_v2", layers=None, side=448, pca_dim=None, policy="square", weights=None,
                 batch_size=16, threads=0, decode_workers=2, fit_images=256, logits=False, cache=None, seed=0):
        self.spec = get_backbone(backbone)
        self.backbone = self.spec.name
        self.layers = self.spec.check_pair(layers)
        self.side = check_side(side, self.spec.side_multiple)
        if policy not in RESIZE_POLICIES:
            raise ValueError(f"policy: expected one of {RESIZE_POLICIES}, got {policy!r}")
        dt_in = self.spec.channels[self.layers[0]]
        if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, (int, np.integer)) or not 1 <= pca_dim <= dt_in):
            raise ValueError(f"pca_dim: expected None or an integer in [1, {dt_in}], got {pca_dim!r}")
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
        self.pca_ = None
        self._runner = None
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

    def _backbone(self):
        if self._runner is None:
            from crosslayer.backbones.export import export
            from crosslayer.backbones.runtime import OnnxBackbone

            # the file recorded (or given) may have been replaced since the PCA was learnt
            self._check_weights(f"{self.backbone} encoder")
            path = export(self.spec, self.layers, self.weights, with_embedding=True, with_logits=self.logits,
                          cache=self.cache, seed=self.seed)
            self._runner = OnnxBackbone(path, intra_op_threads=self.threads)
        return self._runner

    def _prepare(self, source):
        return prepare(source, self.side, self.policy, self.spec.mean, self.spec.std)

    def activations(self, images, on_error="raise"):
        """Yields `ActivationBatch`es: outputs[layer t], outputs[layer t+1] (n, C, h, w), outputs["embedding"] (n, C)
        and, with logits=True, outputs["logits"] — the raw backbone maps for other uses (evaluation, inspection)."""
        runner = self._backbone()
        return stream_batches(images, self._prepare, runner.run, self.batch_size, self.decode_workers, on_error)

    # ---- PCA -----------------------------------------------------------------------------------------------------
    def fit(self, images, y=None):
        """Learns the PCA of layer t's local features on (a seeded sample of at most fit_images of) the images."""
        images = list(images)
        if not images:
            raise ValueError("images: expected at least one image to fit on")
        if self.fit_images is not None and len(images) > self.fit_images:
            chosen = np.sort(np.random.default_rng(self.seed).choice(len(images), self.fit_images, replace=False))
            images = [images[i] for i in chosen]
        accumulator = CovarianceAccumulator(self.spec.channels[self.layers[0]])
        for batch in self.activations(images):
            accumulator.add(_local_rows(batch.outputs[self.layers[0]]))
        mean, projection = accumulator.pca(self.pca_dim)
        self.pca_ = (mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32))
        return self

    def _check_fitted(self):
        if self.pca_ is None:
            raise NotFittedError("this CrossLayerEncoder is not fitted: call fit(images) or CrossLayerEncoder.load(path)")

    # ---- representations -----------------------------------------------------------------------------------------
    def pool_batch(self, outputs: dict, output: str = "codes"):
        """Cross-layer pooling of one activations batch (`output` as in `crosslayer.pool`)."""
        self._check_fitted()
        local, guidance = outputs[self.layers[0]], outputs[self.layers[1]]
        pooled = pool(local, guidance, self.pca_, output=output, num_threads=self.threads)
        if output == "codes":
            pooled.identity = self.identity_digest
        return pooled

    def transform(self, images) -> np.ndarray:
        """(n, Dk*Dt) float32 representations (1.6 MB an image for the default pair: prefer encode for many)."""
        self._check_fitted()
        parts = [self.pool_batch(batch.outputs, "float") for batch in self.activations(images)]
        return np.concatenate(parts) if parts else np.zeros((0, self.Dk * self.Dt), np.float32)

    def encode(self, images) -> Codes:
        """2-bit sign codes with per-channel mean guidance activations."""
        self._check_fitted()
        parts = [self.pool_batch(batch.outputs, "codes") for batch in self.activations(images)]
        return Codes.concatenate(parts) if parts else Codes.empty(self.Dk, self.Dt, self.identity_digest)

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
                "Dk": self.Dk, "Dt": self.Dt}

    def differences(self, made: dict) -> list[str]:
        """How this (requested) encoder differs from the one whose `config()` is `made` — [] when codes of both can
        be mixed. The weights are compared (a file hashed) only when the settings match; unrecorded weights are not."""
        wanted = self.settings()
        found = [f"{key} {made[key]!r} (requested {wanted[key]!r})" for key in COMPARED_SETTINGS if made[key] != wanted[key]]
        if not found and made.get("weights_id") is not None and made["weights_id"] != self.weights_id:
            given = "the packaged weights" if self.weights is None else f"{self.weights}"
            found.append(f"{describe_weights(made['weights_id'])} (requested {given}: {describe_weights(self.weights_id)})")
        return found

    def save(self, path) -> None:
        """Writes the fitted encoder atomically (`crosslayer.formats` zip document: meta + PCA arrays, checksummed)."""
        self._check_fitted()
        body = {**self.config(), "identity": self.identity_digest}
        write_zip_document(path, ENCODER_FORMAT, ENCODER_VERSION, body,
                           {"pca_mean": self.pca_[0], "pca_projection": self.pca_[1]})

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
        if encoder.identity_digest != meta["identity"]:
            raise EncoderFormatError(f"{path}: damaged encoder file (identity {encoder.identity_digest} of its "
                                     f"contents differs from the {meta['identity']} recorded)")
        return encoder

    @classmethod
    def load_for_resume(cls, path, requested: "CrossLayerEncoder") -> "CrossLayerEncoder":
        """The encoder saved at `path`, to add codes to those it made, provided `requested` is the same encoder
        (EncoderMismatchError naming each difference otherwise; a fitted `requested` must have the same PCA too).
        It takes requested's RUNTIME_OPTIONS and weights file (checked to be the same weights: it may have moved)."""
        found = requested.differences(cls.read_meta(path))
        if found:
            raise EncoderMismatchError(path, found)
        stored = cls.load(path, weights=requested.weights, **{key: getattr(requested, key) for key in RUNTIME_OPTIONS})
        if requested.pca_ is not None and not all(np.array_equal(a, b) for a, b in zip(requested.pca_, stored.pca_)):
            raise EncoderMismatchError(path, ["another PCA (the same settings, fitted separately)"])
        return stored


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
