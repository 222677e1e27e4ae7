"""Random sign codes shared by the CPU and GPU search/Gram tests."""

import numpy as np

from crosslayer import Codes, reference


def random_codes(rng, n, dk, dt, zero_fraction=0.5):
    """Codes with many zeros and integer channel means, so equal scores and equal means (ties) are common."""
    nonzero = (1 - zero_fraction) / 2
    signs = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, dk, dt), p=[nonzero, zero_fraction, nonzero])
    if n and dk > 1:
        signs[:, rng.integers(dk)] = 0  # an all-zero channel
    return Codes(reference.pack_ternary(signs), rng.integers(0, 3, (n, dk)).astype(np.float32), dt)
