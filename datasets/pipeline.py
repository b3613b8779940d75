"""Training and validation batches for `fit`, the same on every Keras backend.

    batches = CaseBatches(sample, ids, batch=2, seed=0, shuffle=True, augment=True)
    batches.set_epoch(3)
    image, target = batches[0]   # float32 (2, H, W, D, C), float32 (2, H, W, D, 3)

`sample(case_id) -> (image, target)` reads one case (for this project: the memory-mapped
preprocess cache, train.cache_sampler). A batch is a pure function of (epoch, index): the order of
an epoch is a permutation fixed by (seed, epoch) and a case's augmentation (and randomise's domain.jitter) by (seed, epoch,
position), so a resumed run sees the same batches as an uninterrupted one, whatever the timing of
the reader threads. Thread workers, never processes: process workers hang with JAX on GPUs.

With several processes (JAX on several hosts) each process reads only its own slice of every
global batch; together they feed the same global batches as one process would.
"""
from __future__ import annotations

import math
from typing import Callable

import keras
import numpy as np

from datasets.domain import jitter

Sampler = Callable[[str], tuple]  # case id -> (image (H, W, D, C), target (H, W, D, K)) arrays


def epoch_order(count: int, epoch: int, seed: int) -> np.ndarray:
    """The order of the training cases in `epoch`: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def augment(image: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple:
    """Random flips along each spatial axis (image and target together), intensity scale
    0.9-1.1 and shift +-0.1 (the image is z-scored, so 0.1 standard deviation)."""
    draws = rng.uniform(size=5)
    axes = tuple(a for a in range(3) if draws[a] < 0.5)
    if axes:
        image, target = np.flip(image, axes), np.flip(target, axes)
    image = image * np.float32(0.9 + 0.2 * draws[3]) + np.float32((draws[4] - 0.5) * 0.2)
    return image, target


class CaseBatches(keras.utils.PyDataset):
    """Batches of cases read by `sample`: one epoch (len(self) batches) of the epoch set_epoch chose.

    batch is the global batch; shard (index, count) makes this process read positions
    [index * batch / count, (index + 1) * batch / count) of each global batch. Training
    (shuffle=True) drops the last incomplete batch; validation keeps it (the caller makes the
    number of cases a multiple of the replica count when replicas need equal shares).
    """

    def __init__(self, sample: Sampler, ids: list, batch: int, seed: int = 0,
                 shuffle: bool = False, augment: bool = False, shard: tuple = (0, 1),
                 workers: int = 2, max_queue_size: int = 4, randomise: bool = False):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if batch % shard[1]:
            raise ValueError(f"global batch {batch} does not split over {shard[1]} processes")
        self.sample, self.ids, self.batch = sample, list(ids), batch
        self.seed, self.shuffle, self.augment, self.shard = seed, shuffle, augment, shard
        self.randomise = randomise  # domain.jitter every training image (another acquisition)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Serve `epoch` (0-based, as fit counts) from now on; fit's callback calls this."""
        self.epoch = epoch

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback making every epoch of `fit` read its own order (resume included)."""
        return keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: self.set_epoch(epoch))

    def __len__(self) -> int:
        if self.shuffle:
            return len(self.ids) // self.batch
        return math.ceil(len(self.ids) / self.batch)

    def positions(self, index: int) -> np.ndarray:
        """Positions in the epoch's order that this process reads for batch `index`."""
        start = index * self.batch
        ours = np.arange(start, min(start + self.batch, len(self.ids)))
        return np.array_split(ours, self.shard[1])[self.shard[0]]

    def __getitem__(self, index: int) -> tuple:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        order = (epoch_order(len(self.ids), self.epoch, self.seed) if self.shuffle
                 else np.arange(len(self.ids)))
        images, targets = [], []
        for position in self.positions(index):
            image, target = self.sample(self.ids[order[position]])
            if self.augment:
                rng = np.random.default_rng([self.seed, self.epoch, int(position)])
                image, target = augment(image, target, rng)
            if self.randomise:
                image = jitter(image, np.random.default_rng([self.seed, self.epoch, int(position), 1]))
            images.append(image)
            targets.append(target)
        return (np.stack(images).astype(np.float32, copy=False),
                np.stack(targets).astype(np.float32, copy=False))
