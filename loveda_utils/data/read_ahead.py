"""``ReadAhead``: evaluation tiles loaded in bursts on several threads while the model waits.

Used by :class:`~loveda_utils.data.datamodule.LoveDADataModule` for evaluation without loader
workers (the CPU case: ``num_workers=0``).
"""

from __future__ import annotations

import operator
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from torch.utils.data import Dataset

from ..errors import check_int

__all__ = ["ReadAhead"]


class ReadAhead(Dataset):
    """Load the next tiles of an in-order pass together, on several threads, while the model waits.

    Without CUDA the forward pass keeps every core busy, so loader workers only compete with it
    (:func:`~loveda_utils.data.datamodule.default_num_workers`) and the main process decodes; but then one core decodes while
    the others idle. Asked for a tile that is not ready, this wrapper loads it and the next
    ``ahead - 1`` tiles at once: the calling thread and ``threads - 1`` helpers take tiles in
    turn (PNG decoders release the GIL), and it returns only when all are done, so nothing
    decodes during the following forward passes, which it serves from that buffer.

    Why bursts of several tiles per thread: two threads decoding side by side run well short of
    twice as fast as one, bursts of 2 tiles saved nothing at 512 px while bursts of 8 did, and a
    thread's wake-up is paid once per burst (measured: ``benchmarks/RESULTS.md``, "Tried, did
    not pay").

    For evaluation: samples are produced in the threads, transforms included, so the transforms
    must be deterministic (random augmentation would draw in a different order). Each sample
    is the plain dataset's, a tile that fails to load raises when it is asked for, and memory
    holds at most ``ahead`` samples more than the plain dataset.
    """

    def __init__(self, dataset: Dataset, threads: int, ahead: int | None = None) -> None:
        """Args:
        dataset: a map-style dataset (a :class:`LoveDASegmentation` or a ``Subset`` of one).
        threads: threads that load at once (the calling one included); 1 loads in order.
        ahead: tiles per burst (default ``4 * threads``).
        """
        ahead = 4 * threads if ahead is None and isinstance(threads, int) else ahead
        check_int("threads", threads)
        check_int("ahead", ahead)
        self.dataset = dataset
        self.threads = threads
        self.ahead = ahead
        self._ready: dict[int, tuple[Any, BaseException | None]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        index = operator.index(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        if index not in self._ready:
            if self.threads == 1 or self.ahead == 1:
                return self.dataset[index]
            self._ready = self._load(range(index, min(index + self.ahead, n)))
        sample, error = self._ready.pop(index)
        if error is not None:
            raise error  # the tile's own error, when its turn comes
        return sample

    def _load(self, indices: range) -> dict[int, tuple[Any, BaseException | None]]:
        loaded: dict[int, tuple[Any, BaseException | None]] = {}
        todo = iter(indices)
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    loaded[i] = (self.dataset[i], None)
                except Exception as exc:  # noqa: BLE001 - re-raised for that tile
                    loaded[i] = (None, exc)

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="read-ahead")
        helpers = [self._pool.submit(work) for _ in range(min(self.threads, len(indices)) - 1)]
        work()  # the calling thread loads too: one wake-up fewer per burst
        wait(helpers)
        return loaded

    def __getstate__(self) -> dict[str, Any]:  # for loader workers: no pool, no buffer
        return {**self.__dict__, "_ready": {}, "_pool": None}
