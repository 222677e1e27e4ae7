"""SCFV: the sparse-coding Fisher vector (Liu, Shen, Wang, van den Hengel, Reid, NIPS 2014), the third baseline of the
cross-layer paper's Tables 1-3, on the same local features as cross-layer pooling (layer t, PCA-rotated).

Model: a local feature x is B u + Gaussian noise with a Laplace prior on u, B (D x K) a dictionary of K unit atoms.
The Fisher vector of an image with respect to B, taking the MAP code u* of each feature, is

    G = sum_i (x_i - B u_i*) u_i*^T            (D x K; stored codeword-major as K blocks of D)
    u* = argmin_u 1/2 ||x - B u||^2 + alpha ||u||_1

followed by the signed square root and L2 over the whole vector (the paper applies PCA, power and L2 normalisation
to SCFV). The local features are divided by one scale fitted with the dictionary (the RMS norm of the sample's
features) so that `alpha` means the same on every layer and network.

The dictionary is learnt with sklearn's MiniBatchDictionaryLearning on the PCA-rotated local features of the seeded
training sample that fits the PCAs (`fit_images`): it minimises the same lasso objective the codes are computed
with, which is the generative model whose Fisher vector SCFV is (k-means centres would not be). The codes are
computed by FISTA on all positions of a batch at once (a few matrix products per iteration), which is far faster than
sklearn's per-row lasso; `crosslayer.reference.scfv` is the per-position reference the tests compare with.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from crosslayer.errors import FormatError, UsageError
from crosslayer.formats import read_zip_document, write_zip_document

DICTIONARY_FORMAT = "crosslayer-eval-scfv-dictionary"
DICTIONARY_VERSION = 1
DEFAULT_ATOMS = 100  # Liu et al.'s codebook size
DEFAULT_ALPHA = 0.1  # lasso weight, for features of unit RMS norm
FISTA_ITERATIONS = 2000
FISTA_TOLERANCE = 1e-7  # stop when no code moved by more than this (features have unit RMS norm)
LEARN_EPOCHS = 3


class DictionaryFormatError(FormatError):
    """A cached SCFV dictionary is not one, is of another version or fit, or is damaged."""


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise UsageError(f"scfv_alpha: expected a positive number, got {alpha!r}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise UsageError(f"scfv_alpha: expected a positive finite lasso weight, got {alpha}")
    return float(alpha)


def learn_dictionary(features: np.ndarray, atoms: int = DEFAULT_ATOMS, alpha: float = DEFAULT_ALPHA,
                     seed: int = 0) -> tuple[np.ndarray, float]:
    """features (m, D) PCA-rotated local features -> (atoms (K, D) float32 unit rows, scale): the dictionary of the
    features divided by `scale` (their RMS norm)."""
    from sklearn.decomposition import MiniBatchDictionaryLearning
    from sklearn.exceptions import ConvergenceWarning

    features = np.asarray(features, np.float32)
    if features.ndim != 2 or len(features) < atoms:
        raise UsageError(f"features: expected (m, D) with at least {atoms} rows (one per atom), got {features.shape}")
    scale = float(np.sqrt(np.mean(np.sum(features.astype(np.float64) ** 2, axis=1))))
    if not (np.isfinite(scale) and scale > 0):
        raise UsageError("features: all zero (or not finite); no dictionary can be learnt")
    learner = MiniBatchDictionaryLearning(n_components=atoms, alpha=alpha, batch_size=256, max_iter=LEARN_EPOCHS,
                                          fit_algorithm="cd", random_state=seed, tol=0.0, max_no_improvement=None)
    with warnings.catch_warnings():
        # a fixed number of epochs is the budget; the per-batch lasso's float32 duality gaps are not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        learner.fit(features / scale)
    dictionary = learner.components_.astype(np.float32)
    norms = np.linalg.norm(dictionary, axis=1, keepdims=True)
    # an atom no sample used stays at its random start: still a valid (unit) atom
    return np.ascontiguousarray(dictionary / np.where(norms > 0, norms, 1)), scale


def sparse_codes(features: np.ndarray, dictionary: np.ndarray, alpha: float,
                 iterations: int = FISTA_ITERATIONS, tolerance: float = FISTA_TOLERANCE) -> np.ndarray:
    """(m, D) features, (K, D) atoms -> (m, K) lasso codes argmin 1/2||x - u B||^2 + alpha ||u||_1 by FISTA with
    adaptive restart (O'Donoghue and Candes 2015): a row's momentum is reset when it points uphill, which keeps
    the convergence linear on the strongly convex problems an undercomplete dictionary gives, however correlated
    its atoms. Stops when no code moved by more than `tolerance` in an iteration."""
    x = np.asarray(features, np.float64)
    b = np.asarray(dictionary, np.float64)
    gram = b @ b.T
    step = 1.0 / max(float(np.linalg.eigvalsh(gram)[-1]), 1e-12)  # 1 / Lipschitz constant of the smooth part
    xb = x @ b.T
    u = np.zeros((len(x), len(b)))
    y, t = u, np.ones((len(x), 1))
    for _ in range(iterations):
        z = y - step * (y @ gram - xb)
        u_next = np.sign(z) * np.maximum(np.abs(z) - step * alpha, 0.0)
        change = u_next - u
        uphill = np.sum((y - u_next) * change, axis=1, keepdims=True) > 0
        t = np.where(uphill, 1.0, t)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = u_next + ((t - 1.0) / t_next) * change
        u, t = u_next, t_next
        if not u.size or np.max(np.abs(change)) < tolerance:
            break
    return u


def scfv_encode(local: np.ndarray, pca, dictionary: np.ndarray, scale: float, alpha: float) -> np.ndarray:
    """local (n, Dt_in, H, W) maps, pca (mean, projection) or None -> (n, K*D) float32 SCFV rows."""
    from crosslayer.l2 import l2_normalize

    local = np.asarray(local, np.float32)
    n, c = local.shape[:2]
    x = local.reshape(n, c, -1).transpose(0, 2, 1)  # (n, N, C)
    if pca is not None:
        mean, projection = pca
        x = (x - mean) @ projection
    x = x / np.float32(scale)
    positions, dim = x.shape[1], x.shape[2]
    if dim != dictionary.shape[1]:
        raise UsageError(f"dictionary: atoms of {dictionary.shape[1]} dimensions for local features of {dim}")
    rows = x.reshape(n * positions, dim)
    codes = sparse_codes(rows, dictionary, alpha)
    residuals = rows - codes @ dictionary
    fisher = np.einsum("npk,npd->nkd", codes.reshape(n, positions, -1), residuals.reshape(n, positions, dim))
    fisher = fisher.reshape(n, -1)
    return l2_normalize((np.sign(fisher) * np.sqrt(np.abs(fisher))).astype(np.float32))


# ---- the fitted dictionary on disk -------------------------------------------------------------------------------

def dictionary_path(directory, key: str, fit_images: int, seed: int) -> Path:
    return Path(directory) / f"scfv-dictionary-{key}-fit{fit_images}-seed{seed}.zip"


def write_dictionary(path, dictionary: np.ndarray, scale: float, fit_images: int, seed: int) -> None:
    write_zip_document(path, DICTIONARY_FORMAT, DICTIONARY_VERSION,
                       {"fit_images": int(fit_images), "seed": int(seed), "scale": float(scale)},
                       {"dictionary": np.ascontiguousarray(dictionary, np.float32)})


def read_dictionary(path, fit_images: int, seed: int) -> tuple[np.ndarray, float]:
    body, arrays = read_zip_document(path, DICTIONARY_FORMAT, DICTIONARY_VERSION, "crosslayer SCFV dictionary",
                                     DictionaryFormatError)
    if (body.get("fit_images"), body.get("seed")) != (fit_images, seed):
        raise DictionaryFormatError(f"{path}: fitted on fit_images={body.get('fit_images')}, seed={body.get('seed')}; "
                                    f"expected {fit_images}, {seed}")
    dictionary, scale = arrays.get("dictionary"), body.get("scale")
    if (dictionary is None or dictionary.dtype != np.float32 or dictionary.ndim != 2
            or not isinstance(scale, float) or not scale > 0):
        raise DictionaryFormatError(f"{path}: damaged SCFV dictionary (not a float32 (K, D) array and a scale)")
    return dictionary, scale


def load_or_learn(directory, config, local: str, pca, dataset, encoder, step, fit_images: int, seed: int,
                  progress: bool) -> tuple[np.ndarray, float]:
    """The dictionary of `config` (cached in the pass folder), learnt on the PCA-rotated layer-`local` features of
    the same seeded training sample the PCAs are fitted on."""
    from crosslayer.images import BadImagesError
    from crosslayer.pca import local_rows

    path = dictionary_path(directory, config.key(), fit_images, seed)
    if path.exists():
        try:
            return read_dictionary(path, fit_images, seed)
        except DictionaryFormatError:
            pass  # learnt again (seeded: the same dictionary) and replaced
    train = dataset.indices("train")
    chosen = np.sort(np.random.default_rng(seed).choice(train, min(fit_images, len(train)), replace=False))
    rows, failures = [], []
    for batch in encoder.activations([dataset.paths[i] for i in chosen], on_error="skip", pass_=step,
                                     progress=progress, desc="fit SCFV dictionary"):
        failures += [(error.path, error.reason) for _, error in batch.errors]
        if batch.positions:
            features = local_rows(np.asarray(batch.outputs[local], np.float32))
            rows.append(features if pca is None else (features - pca[0]) @ pca[1])
    if failures:
        raise BadImagesError(failures, "remove or replace them, then rerun")
    dictionary, scale = learn_dictionary(np.concatenate(rows), config.scfv_atoms, config.scfv_alpha, seed)
    write_dictionary(path, dictionary, scale, fit_images, seed)
    return dictionary, scale
