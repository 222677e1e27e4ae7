"""AConv guidance: a new 1x1 conv layer (`filters` outputs, ReLU) over the PCA-reduced region embeddings, trained
on the target training split through max-pooling over positions and a logistic-regression (softmax) layer with
cross-entropy (paper section 3.4: lr 0.01, 50 epochs, no augmentation). Its activations then guide cross-layer
pooling of the region embeddings themselves."""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError

ROW_CHUNK = 256


def build_model(dim: int, filters: int, classes: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class GuidanceNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Linear(dim, filters)  # a 1x1 conv acting on (n, positions, dim)
            self.classifier = nn.Linear(filters, classes)

        def guidance(self, regions):
            return torch.relu(self.conv(regions))

        def forward(self, regions):
            return self.classifier(self.guidance(regions).amax(dim=1))

    return GuidanceNet()


def train_guidance(regions: np.ndarray, labels: np.ndarray, classes: int, filters: int = 100, epochs: int = 50,
                   lr: float = 0.01, batch_size: int = 32, seed: int = 0, progress: bool = False):
    """regions: (n, positions, dim) float (a memmap is fine); labels: (n,) int. Returns (model, losses per epoch)."""
    import torch

    if len(regions) != len(labels):
        raise UsageError(f"labels: {len(labels)} labels for {len(regions)} images")
    if len(regions) == 0:
        raise UsageError("regions: no training images")
    data = torch.from_numpy(np.asarray(regions, dtype=np.float32))
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    model = build_model(data.shape[2], filters, classes, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    losses = []
    epochs_iter = range(epochs)
    if progress:
        from tqdm import tqdm

        epochs_iter = tqdm(epochs_iter, desc="train AConv guidance", unit="epoch")
    for _ in epochs_iter:
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        model.train()
        for start in range(0, len(data), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(data[index]), target[index])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(data))
    return model.eval(), losses


def guided_representation(model, regions: np.ndarray) -> np.ndarray:
    """(n, positions, dim) -> (n, filters*dim) float32: cross-layer pooling of the regions guided by the trained
    layer's activations (per-channel L2 and signed square root, as for OConv)."""
    import torch

    from crosslayer.pooling import pool

    regions = np.asarray(regions, dtype=np.float32)
    with torch.inference_mode():
        guidance = model.guidance(torch.from_numpy(regions)).numpy()
    local = np.ascontiguousarray(regions.transpose(0, 2, 1))[..., None]  # (n, dim, positions, 1)
    guide = np.ascontiguousarray(guidance.transpose(0, 2, 1))[..., None]  # (n, filters, positions, 1)
    return pool(local, guide)
