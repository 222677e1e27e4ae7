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


def write_two_colour_set(root, per_class=7, train=4, test=2, noise=20, side=40, seed=0):
    """A tiny classification set in `root`: two classes of noisy red and blue side x side PNGs, `per_class` each,
    the first `train` of a class in the train split, the next `test` in test, the rest in val; manifest.csv
    (path,label,split) beside them. Returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lines = ["path,label,split"]
    for label, colour in enumerate(((220, 40, 40), (40, 40, 220))):
        for i in range(per_class):
            image = np.clip(np.asarray(colour) + rng.normal(0, noise, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / f"c{label}_{i}.png")
            split = "train" if i < train else "test" if i < train + test else "val"
            lines.append(f"c{label}_{i}.png,class{label},{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root
