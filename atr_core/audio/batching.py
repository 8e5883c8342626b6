"""Length-aware batching with bounded memory: the policy behind the extraction job's model batches.

Items (waveform windows) are buffered per length. A length bucket goes out on its own when it
holds ``batch_size`` items or ``max_samples`` samples; when everything buffered reaches either
limit, all buffers go out as one batch, shortest lengths first (the model groups equal lengths
inside it). So at most about one batch is ever buffered. A single item longer than
``max_samples`` makes a batch of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class LengthBatcher(Generic[T]):
    """Buffers items by length and says when a batch is due (see the module docstring).

    ``count`` and ``samples`` are what is buffered now: after every :meth:`add`, ``count <=
    batch_size`` and ``samples <= max_samples`` unless a single item is buffered.
    """

    def __init__(self, batch_size: int, max_samples: int):
        self.batch_size = max(1, batch_size)
        self.max_samples = max(1, max_samples)
        self._buckets: dict[int, list[T]] = {}
        self.count = 0
        self.samples = 0

    def add(self, item: T, length: int) -> list[T] | None:
        """Buffer ``item`` of ``length`` samples; return the batch due before it, if one is."""
        batch = None
        bucket = self._buckets.get(length, [])
        if bucket and (len(bucket) >= self.batch_size or (len(bucket) + 1) * length > self.max_samples):
            batch = self._take([length])
        elif self.count and (self.count >= self.batch_size or self.samples + length > self.max_samples):
            batch = self._take(list(self._buckets))
        self._buckets.setdefault(length, []).append(item)
        self.count += 1
        self.samples += length
        return batch

    def flush(self) -> list[T]:
        """Everything buffered, as one batch (empty when nothing is)."""
        return self._take(list(self._buckets))

    def _take(self, lengths: Iterable[int]) -> list[T]:
        batch: list[T] = []
        for n in sorted(lengths):
            items = self._buckets.pop(n, [])
            batch.extend(items)
            self.count -= len(items)
            self.samples -= n * len(items)
        return batch
