"""Random sign codes shared by the CPU and GPU search/Gram tests."""

import numpy as np

import crosslayer
from crosslayer import Codes, reference


def random_codes(rng, n, dk, dt, zero_fraction=0.5):
    """Codes with many zeros and integer channel means, so equal scores and equal means (ties) are common."""
    nonzero = (1 - zero_fraction) / 2
    signs = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, dk, dt), p=[nonzero, zero_fraction, nonzero])
    if n and dk > 1:
        signs[:, rng.integers(dk)] = 0  # an all-zero channel
    return Codes(reference.pack_ternary(signs), rng.integers(0, 3, (n, dk)).astype(np.float32), dt)


def random_compactable_signs(rng, n, dk, dt, dead_fraction=0.2):
    """Ternary values whose channels are each all nonzero or all zero (what pooling produces): the compact layout
    holds them losslessly. Channel 0 of every image is dead when dk > 1, so all-dead and mixed cases both occur."""
    signs = rng.choice(np.array([-1, 1], np.int8), size=(n, dk, dt))
    dead = rng.random((n, dk)) < dead_fraction
    if dk > 1:
        dead[:, 0] = True
    signs[dead] = 0
    return signs


def random_compact_codes(rng, n, dk, dt, dead_fraction=0.2):
    """Compact Codes of random_compactable_signs, with integer channel means (ties common)."""
    signs = random_compactable_signs(rng, n, dk, dt, dead_fraction)
    return Codes(reference.compact_from_ternary(signs), rng.integers(0, 3, (n, dk)).astype(np.float32), dt)


def for_each_popcount_path(check):
    """Runs check(path) under every popcount path this CPU supports, then restores the one in use."""
    before = crosslayer.popcount_path()
    try:
        for path in crosslayer.popcount_paths():
            crosslayer.set_popcount_path(path)
            check(path)
    finally:
        crosslayer.set_popcount_path(before)
