"""DataLoader: mini-batches from in-memory NumPy arrays, in a shuffled order that can be resumed."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..creation import host_rng


class DataLoader:
    """Iterate `(x_batch, y_batch, ...)` tuples of NumPy arrays, `batch_size` rows at a time.

    All arrays share their first dimension. With `shuffle`, each epoch visits the rows in a fresh
    permutation drawn from the loader's own generator: `np.random.default_rng(seed)` when `seed`
    is given, else one seeded from `deers.host_rng()` at construction (so `deers.manual_seed`
    before building the loader fixes the order). Owning its generator keeps `load_state_dict`
    from rewinding the host generator other code draws from.

    `state_dict()` records the epoch, how many batches of the current epoch were already yielded
    and the generator state at the start of that epoch, so a resumed run replays exactly the same
    order and continues with the next batch.
    """

    def __init__(self, arrays: "tuple[np.ndarray, ...] | np.ndarray", batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, seed: int | None = None):
        arrays = (arrays,) if isinstance(arrays, np.ndarray) else tuple(arrays)
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"DataLoader arrays must have the same first dimension, got lengths {lengths}")
        if batch_size < 1:
            raise ValueError(f"DataLoader batch_size must be >= 1, got {batch_size}")
        self.arrays = arrays
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        if seed is None:  # draw from the host generator only when the order is random
            seed = int(host_rng().integers(2**63)) if shuffle else 0
        self.rng = np.random.default_rng(seed)
        self.epoch = 0  # epochs started before the current one
        self._batch = 0  # batches yielded in the current epoch (0 = between epochs)
        self._epoch_state = self.rng.bit_generator.state  # generator state when the current epoch began
        self._resuming = False  # set by load_state_dict: the next __iter__ continues the saved epoch

    @property
    def num_rows(self) -> int:
        return len(self.arrays[0])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self._batch == len(self) or (self._batch and not self._resuming):  # previous epoch done or abandoned
            self.epoch += 1
            self._batch = 0
        skip, self._resuming = self._batch, False
        self._epoch_state = self.rng.bit_generator.state
        order = self.rng.permutation(self.num_rows) if self.shuffle else None
        for b in range(skip, len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.num_rows)
            rows = order[lo:hi] if order is not None else slice(lo, hi)
            self._batch = b + 1
            yield tuple(a[rows] for a in self.arrays)

    def state_dict(self) -> dict:
        """Epoch, position in it and generator state: enough to replay the same batches after a restart."""
        if self._batch == 0 or self._batch == len(self):  # between epochs: the next one starts afresh
            epoch = self.epoch + (1 if self._batch else 0)
            return {"epoch": epoch, "batch": 0, "rng_state": self.rng.bit_generator.state}
        return {"epoch": self.epoch, "batch": self._batch, "rng_state": self._epoch_state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; the next iteration continues where the saved loader stood."""
        self.epoch = int(state["epoch"])
        self._batch = int(state["batch"])
        self.rng.bit_generator.state = state["rng_state"]
        self._epoch_state = state["rng_state"]
        self._resuming = self._batch > 0
