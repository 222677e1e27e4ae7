"""Tiny generated test images shared by the end-to-end tests."""

import numpy as np


def write_block_images(folder, count, seed=0, side=72):
    """`count` PNGs of side x side pixels, each a distinct 4 x 4 grid of random colour blocks (so every image gets
    its own code). Returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(np.kron(blocks, np.ones((side // 4, side // 4, 1), np.uint8))).save(path)
        paths.append(path)
    return paths
