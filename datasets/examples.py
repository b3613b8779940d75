"""Batches of a baseline family's examples for `fit`: drawn per case, pooled over cases, shuffled.

    draw = family_draw(family, cache, ids, MODALITIES, config, augment=True)
    counts, size = census(draw, len(ids), seed=0)
    batches = PooledExamples(draw, counts, batch=4, seed=0, shuffle=True,
                             pool=pool_cases(counts, size))
    batches.set_epoch(3)
    x, y = batches[0]     # float32 (4, ...) examples, float32 (4, ..., 3) regions WT, TC, ET

A baseline draws many examples from each case (Kermi: 3 axial patches per slice; the 3D U-Net: 10
sub-volumes; Ben naceur: every window holding brain) and the published code shuffles them over
the whole dataset. An epoch's examples are tens of GB at full size, so the cases are taken
`pool` at a time (about POOL_BYTES of examples: 7 cases for Kermi at full size, 3 for Ben
naceur, 36 for the 3D U-Net): each epoch the cases in pipeline.epoch_order are cut into pools,
each pool's examples are drawn (case i with default_rng([seed, epoch, i])) and shuffled
together, and the pools' examples, one after the other, are one stream cut into batches. A batch is a pure function
of (seed, epoch, index), so a resumed run sees the same sequence as an uninterrupted one.
Validation (shuffle=False): the cases in order, case i drawn with default_rng([seed, i]) without
augmentation, the same examples every epoch.

The number of batches must be fixed before training (the Kermi and Ben naceur schedules count
epochs in steps), so `census` draws every case once and counts its examples; a pool whose draw
gives another count in some epoch (the 3D U-Net's rejection sampling) is cut, or topped up with
repeats of its own examples, to its census count. The stream's last incomplete batch is dropped,
so that every batch has the same shape. The next pool is drawn in the background while the
current one is trained on; each dataset holds at most three pools.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import keras
import numpy as np

from datasets.pipeline import epoch_order

POOL_BYTES = 2 ** 30  # examples shuffled together: as many cases as fill about this
HELD_POOLS = 3  # the pool being read, the next one, and the one a batch may straddle

Draw = Callable[[int, np.random.Generator], tuple]  # case index -> (x (N, ...), y (N, ..., 3))


def family_draw(family, cache, ids: list, modalities: tuple, config, augment: bool) -> Draw:
    """case index -> the family's examples of ids[index]: prepare_case, then examples."""
    def draw(index: int, rng: np.random.Generator) -> tuple:
        inputs, regions = family.prepare_case(cache, ids[index], modalities, config)
        return family.examples(inputs, regions, config, rng, augment=augment)
    return draw


def census(draw: Draw, cases: int, seed: int, workers: int = 2) -> tuple:
    """(examples per case, bytes of one example x and y), each case drawn once with the
    generator default_rng([seed, case index])."""
    def count(index: int) -> tuple:
        x, y = draw(index, np.random.default_rng([seed, index]))
        return len(x), (x[0].nbytes + y[0].nbytes) if len(x) else 0

    with ThreadPoolExecutor(workers) as threads:
        counted = list(threads.map(count, range(cases)))
    return [n for n, _ in counted], max((size for _, size in counted), default=0)


def pool_cases(counts: list, example_bytes: int, budget: int = POOL_BYTES) -> int:
    """How many cases' examples fill about `budget` bytes (at least one case)."""
    per_case = max(float(np.mean(counts)) * example_bytes, 1.0) if counts else 1.0
    return max(1, int(budget // per_case))


def fitted(x: np.ndarray, y: np.ndarray, count: int, rng: np.random.Generator) -> tuple:
    """The first `count` examples, topped up with random repeats when there are fewer."""
    if len(x) >= count:
        return x[:count], y[:count]
    if not len(x):
        raise ValueError(f"a pool drew no examples where its census counted {count}")
    extra = rng.choice(len(x), count - len(x))
    return np.concatenate([x, x[extra]]), np.concatenate([y, y[extra]])


class _Pool:
    """One pool's examples, drawn once by whichever thread asks first."""

    def __init__(self):
        self.lock, self.examples = threading.Lock(), None


class PooledExamples(keras.utils.PyDataset):
    """One epoch (len(self) batches) of the stream of pooled examples of the epoch set_epoch chose.

    counts[i] is the census count of case i; batch the global batch; shard (index, count) makes
    this process read its share of each global batch, as pipeline.CaseBatches does.
    """

    def __init__(self, draw: Draw, counts: list, batch: int, seed: int = 0,
                 shuffle: bool = False, pool: int = 8, shard: tuple = (0, 1),
                 workers: int = 2, max_queue_size: int = 8):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if batch % shard[1]:
            raise ValueError(f"global batch {batch} does not split over {shard[1]} processes")
        self.draw, self.counts, self.batch = draw, [int(c) for c in counts], batch
        self.seed, self.shuffle, self.pool, self.shard = seed, shuffle, pool, shard
        self.epoch = 0
        self._lock, self._pools = threading.Lock(), OrderedDict()
        self._ahead = ThreadPoolExecutor(1)

    def set_epoch(self, epoch: int) -> None:
        """Serve `epoch` (0-based, as fit counts) from now on; fit's callback calls this."""
        self.epoch = epoch

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback making every epoch of `fit` read its own stream (resume included)."""
        return keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: self.set_epoch(epoch))

    def __len__(self) -> int:
        return sum(self.counts) // self.batch

    def pools(self, epoch: int) -> tuple:
        """(the case indices of each pool, the stream position where each pool starts)."""
        order = (epoch_order(len(self.counts), epoch, self.seed) if self.shuffle
                 else np.arange(len(self.counts)))
        pools = [order[start:start + self.pool] for start in range(0, len(order), self.pool)]
        sizes = [sum(self.counts[c] for c in cases) for cases in pools]
        return pools, np.concatenate([[0], np.cumsum(sizes)]).astype(int)

    def drawn(self, epoch: int, index: int, cases: np.ndarray) -> tuple:
        """(x, y) of one pool: its cases' examples, shuffled together when training. A pool that
        draws nothing where the census counted examples is drawn again as the census drew it."""
        drawn = [self.draw(int(c), np.random.default_rng(
            [self.seed, epoch, int(c)] if self.shuffle else [self.seed, int(c)])) for c in cases]
        if not any(len(d[0]) for d in drawn):
            drawn = [self.draw(int(c), np.random.default_rng([self.seed, int(c)])) for c in cases]
        x = np.concatenate([d[0] for d in drawn])
        y = np.concatenate([d[1] for d in drawn])
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, len(self.counts) + index])
            permutation = order.permutation(len(x))
            x, y = fitted(x[permutation], y[permutation],
                          sum(self.counts[c] for c in cases), order)
        return x, y

    def pool_examples(self, epoch: int, index: int, cases: np.ndarray) -> tuple:
        """The memoised (x, y) of pool `index` of `epoch`, drawn here if no thread has yet."""
        key = (epoch, index)
        with self._lock:
            entry = self._pools.setdefault(key, _Pool())
            self._pools.move_to_end(key)
            while len(self._pools) > HELD_POOLS:
                self._pools.popitem(last=False)
        with entry.lock:
            if entry.examples is None:
                entry.examples = self.drawn(epoch, index, cases)
        return entry.examples

    def positions(self, index: int) -> np.ndarray:
        """Stream positions that this process reads for batch `index`."""
        ours = np.arange(index * self.batch, (index + 1) * self.batch)
        return np.array_split(ours, self.shard[1])[self.shard[0]]

    def __getitem__(self, index: int) -> tuple:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        epoch = self.epoch
        pools, starts = self.pools(epoch)
        positions = self.positions(index)
        owner = np.searchsorted(starts, positions, side="right") - 1
        xs, ys = [], []
        for p in np.unique(owner):
            x, y = self.pool_examples(epoch, int(p), pools[p])
            chosen = positions[owner == p] - starts[p]
            xs.append(x[chosen])
            ys.append(y[chosen])
        following = int(owner[-1]) + 1
        if following < len(pools) and (epoch, following) not in self._pools:
            self._ahead.submit(self.pool_examples, epoch, following, pools[following])
        return (np.concatenate(xs).astype(np.float32, copy=False),
                np.concatenate(ys).astype(np.float32))


def family_batches(family, cache, ids: list, modalities: tuple, batch: int, config,
                   shuffle: bool, shard: tuple = (0, 1)) -> PooledExamples:
    """PooledExamples of these cases: training (shuffle, augmented) or validation (fixed)."""
    draw = family_draw(family, cache, ids, modalities, config, augment=shuffle)
    counts, example_bytes = census(draw, len(ids), config.train.seed)
    return PooledExamples(draw, counts, batch, config.train.seed, shuffle,
                          pool_cases(counts, example_bytes), shard)
