"""``LoveDADataModule``: LoveDA for Lightning (random crops to train, whole tiles to evaluate)."""

from __future__ import annotations

import operator
import os
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Subset,
    default_collate,
    get_worker_info,
)

from ..errors import ConfigError
from ..runtime import available_cores
from .classes import normalize_scenes, normalize_split
from .dataset import LoveDASegmentation
from .root import resolve_data_root
from .synthetic import is_synthetic
from .transforms import Fidelity, crop_fits, eval_transforms, train_transforms
from .validation import check_tree

Sample = dict[str, Any]


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in each worker from torch's per-worker seed (torch seeds itself:
    the loader generator's base seed plus the worker id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def distributed_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process in the default process group (DDP); ``(0, 1)``
    without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_seed(seed: int, rank: int) -> int:
    """The augmentation seed of DDP rank ``rank``: ``seed`` itself on rank 0, so that a single
    process draws what it always drew, and a well-mixed 63-bit seed of ``(seed, rank)`` on the
    others, so that ranks draw different crops (as MMEngine seeds its workers per rank)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def default_num_workers(processes: int = 1) -> int:
    """Loader processes for each of ``processes`` training processes on this machine (DDP ranks).

    Each process gets its share of :func:`~loveda_utils.runtime.available_cores`: the cores its
    CPU affinity allows (a scheduler's allocation, not the whole machine), or the suite's budget
    for each of the models it trains side by side (``$LOVEDA_CORES``).
    With CUDA, every core of the share but one decodes PNGs (CPU-bound) while the GPU computes;
    the remaining one runs the main process, which feeds the GPU and pins the batches. There is
    no fixed cap: a light model on a fast GPU needs a dozen workers or more to be kept busy.
    Without CUDA the model's forward/backward already uses ``torch.get_num_threads()`` cores (all
    of them by default), and workers only compete with it: on the 2-core benchmark machine,
    workers made evaluation and training slower than decoding in the main process
    (``benchmarks/RESULTS.md``). So the CPU default is the cores torch leaves unused (0 by default).
    """
    share = max(1, available_cores() // max(1, processes))
    if torch.cuda.is_available():
        return max(1, share - 1)
    return max(0, share - torch.get_num_threads())


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """``default_collate``, except that images stored channels-last stay so in the batch.

    The dataset hands out images as views of the decoded ``[H, W, 3]`` arrays. Stacking them
    as they are stored is a plain copy and gives a channels-last ``[B, 3, H, W]`` batch, the
    layout the model runs in on the CPU; ``default_collate`` would transpose every tile to
    NCHW and the evaluation would transpose it back (both copies timed in
    ``benchmarks/RESULTS.md``).
    Images in any other layout (e.g. after a resizing transform) are stacked as usual. A batch
    of one sample in the main process (MMSeg evaluates one tile at a time) is a view of the
    sample: no copy at all.
    """
    if len(samples) == 1 and get_worker_info() is None:
        # Workers need default_collate's shared-memory copy; the main process needs none.
        return {
            k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else default_collate([v])
            for k, v in samples[0].items()
        }
    images = [s["image"] for s in samples] if samples and "image" in samples[0] else []
    hwc = [im.permute(1, 2, 0) for im in images if isinstance(im, torch.Tensor) and im.ndim == 3]
    if not hwc or len(hwc) != len(images) or not all(x.is_contiguous() for x in hwc):
        return default_collate(samples)
    batch = default_collate([{k: v for k, v in s.items() if k != "image"} for s in samples])
    # default_collate stacks into shared memory inside a loader worker: no extra copy there.
    batch["image"] = default_collate(hwc).permute(0, 3, 1, 2)
    return batch


class ReadAhead(Dataset):
    """Load the next tiles of an in-order pass together, on several threads, while the model waits.

    Without CUDA the forward pass keeps every core busy, so loader workers only compete with it
    (:func:`default_num_workers`) and the main process decodes; but then one core decodes while
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
        for name, value in (("threads", threads), ("ahead", ahead)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
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


class LoveDADataModule(L.LightningDataModule):
    """LoveDA for training and evaluation.

    Training batches are random crops through :func:`~loveda_utils.data.transforms.train_transforms`
    (MMSeg's LoveDA pipeline); evaluation uses whole tiles. Images stay ``uint8`` until the model
    normalises them on the device. Before any worker starts, :meth:`setup` validates the splits it
    will read (``validate="quick"``: pairing, headers and mask values, so a 16-bit mask or a
    value outside 0..7 is refused; ``"full"``: decode everything) and raises
    :class:`~loveda_utils.errors.InvalidDataError` listing each bad file.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        train_scenes: str | Sequence[str] = "both",
        eval_scenes: str | Sequence[str] = "both",
        eval_split: str = "val",
        batch_size: int = 16,
        eval_batch_size: int = 1,
        crop_size: int = 512,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
        train_transform: Callable[[Sample], Sample] | None = None,
        eval_transform: Callable[[Sample], Sample] | None = None,
        limit_eval_images: int | None = None,
        validate: str | None = "quick",
        read_ahead: int | None = None,
        fidelity: Fidelity = "mmseg",
    ) -> None:
        """Args:
        root: LoveDA root; ``None`` -> ``$LOVEDA_ROOT`` -> the embedded mini-LoveDA.
        train_scenes, eval_scenes: ``"urban"``, ``"rural"``, ``"both"`` or a list.
        eval_split: split used by ``val_dataloader``/``test_dataloader`` (``"test"`` has no masks:
            predictions only).
        batch_size: training images per step on each device (MMSeg's per-GPU batch: under DDP
            the step's global batch is ``batch_size`` times the processes);
            ``eval_batch_size``: whole tiles per evaluation batch.
        crop_size: training crop; refused when larger than the tiles.
        num_workers: loader processes of each training process (default:
            :func:`default_num_workers` for the processes this machine runs: with CUDA one per
            core of each process's share but one, without CUDA the cores torch's threads leave
            free).
        pin_memory: page-locked host memory for faster copies (default: when CUDA is available).
        seed: seeds the shuffling and, through it, every worker's augmentation stream. Under
            DDP (a default process group) each rank reads its own shard, and each rank's
            augmentation stream is seeded by :func:`rank_seed`, so ranks draw different crops.
        train_transform, eval_transform: replace the default pipelines.
        limit_eval_images: evaluate only the first N tiles (in file order) of the eval split.
        validate: ``"quick"``, ``"full"`` or ``None`` (skip the up-front check).
        read_ahead: with ``num_workers=0``, evaluation tiles loaded together by
            ``torch.get_num_threads()`` threads (:class:`ReadAhead`); default 4 per thread,
            1 turns it off.
        fidelity: the default training pipeline's arithmetic, ``"mmseg"`` or ``"fast"``
            (:func:`~loveda_utils.data.transforms.train_transforms`).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = resolve_data_root(root)
        self.hparams["root"] = str(self.root)  # checkpoints load with weights_only: plain types only
        self.train_scenes = normalize_scenes(train_scenes)
        self.eval_scenes = normalize_scenes(eval_scenes)
        self.eval_split = normalize_split(eval_split)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.crop_size = crop_size
        self._num_workers = num_workers
        self.read_ahead = 4 * torch.get_num_threads() if read_ahead is None else read_ahead
        if (
            not isinstance(self.read_ahead, int)
            or isinstance(self.read_ahead, bool)
            or self.read_ahead < 1
        ):
            raise ValueError(f"read_ahead must be a positive int or None, got {read_ahead!r}")
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = seed
        self.train_transform = train_transform or train_transforms(crop_size, fidelity=fidelity)
        self.eval_transform = eval_transform or eval_transforms()
        self.limit_eval_images = limit_eval_images
        self.validate = validate
        self.synthetic = is_synthetic(self.root)
        self.train_dataset: LoveDASegmentation | None = None
        self.eval_dataset: LoveDASegmentation | Subset | None = None

    @property
    def num_workers(self) -> int:
        """Loader processes of this training process: the ones asked for, or
        :func:`default_num_workers` for the training processes on this machine."""
        if self._num_workers is not None:
            return self._num_workers
        return default_num_workers(self._processes_on_this_machine())

    def _processes_on_this_machine(self) -> int:
        # Lightning attaches its Trainer before asking for loaders: its devices are this node's
        # ranks. Other launchers (torchrun) say it in LOCAL_WORLD_SIZE.
        trainer = self.trainer
        if trainer is not None:
            return max(1, trainer.num_devices)
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    # -- setup ---------------------------------------------------------------------------------

    def _check(self, split: str, scenes: Sequence[str]) -> None:
        # What the loader needs (pairs, headers, 8-bit masks with values 0..7), not the comparison
        # with the release manifest: other data in LoveDA's layout trains as well.
        if self.validate:
            check_tree(self.root, [split], scenes, level=self.validate, release=False).raise_for_problems()

    def setup(self, stage: str | None = None) -> None:
        """Validate and build the datasets a stage needs (``fit``, ``validate``, ``test``, ``predict``)."""
        if stage in (None, "fit") and self.train_dataset is None:
            self._check("Train", self.train_scenes)
            self.train_dataset = LoveDASegmentation(self.root, "train", self.train_scenes, self.train_transform)
            crop_fits(self.crop_size, self.tile_size(self.train_dataset))
        if self.eval_dataset is None:
            self._check(self.eval_split, self.eval_scenes)
            dataset = LoveDASegmentation(self.root, self.eval_split, self.eval_scenes, self.eval_transform)
            if self.limit_eval_images is not None:
                dataset = Subset(dataset, range(min(self.limit_eval_images, len(dataset))))
            self.eval_dataset = dataset

    @staticmethod
    def tile_size(dataset: LoveDASegmentation) -> tuple[int, int]:
        """(height, width) of the first tile, read from its PNG header."""
        with Image.open(dataset.files[0]["image"]) as img:
            return img.height, img.width

    def eval_tile_size(self) -> tuple[int, int]:
        """(height, width) of the eval split's tiles (of the full split behind a ``limit_eval_images``)."""
        if self.eval_dataset is None:
            self.setup("validate")
        dataset = self.eval_dataset
        return self.tile_size(dataset.dataset if isinstance(dataset, Subset) else dataset)

    # -- loaders -------------------------------------------------------------------------------

    def _sampler(self, dataset, shuffle: bool) -> DistributedSampler | None:
        """This rank's shard under DDP; ``None`` (the loader's own sampler) in one process.

        Training: torch's ``DistributedSampler``, shuffled by :attr:`seed` and the epoch (Lightning
        sets it), padded so that every rank runs as many steps. Evaluation: an unpadded shard
        (rank r takes tiles r, r + world, ...), so every tile is counted exactly once; padding
        would count the first tiles twice. Lightning keeps both (they are distributed samplers
        already) instead of injecting its own.
        """
        rank, world = distributed_rank()
        if world == 1:
            return None
        if shuffle:
            return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                      seed=self.seed)
        if len(dataset) < world:
            raise ConfigError(
                f"the {self.eval_split} split holds {len(dataset)} tile(s) for {world} DDP "
                f"processes: each needs one; evaluate at least {world} tiles (limit_eval_images)"
            )
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        rank, _ = distributed_rank()
        sampler = self._sampler(dataset, shuffle)
        samples = len(sampler) if sampler is not None else len(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=shuffle and samples >= batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            # Our worker_init_fn, so Lightning adds none; the per-rank part is in the generator,
            # whose base seed each worker's torch seed derives from.
            worker_init_fn=seed_worker if workers > 0 else None,
            generator=torch.Generator().manual_seed(rank_seed(self.seed, rank)),
            prefetch_factor=2 if workers > 0 else None,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        rank, world = distributed_rank()
        if world > 1 and self.num_workers == 0:
            # The main process draws the augmentations, from the global generators, which every
            # rank seeded alike (seed_everything): give each rank its own stream.
            torch.manual_seed(rank_seed(self.seed, rank))
            seed_worker(0)
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.eval_dataset is None:
            self.setup("validate")
        dataset = self.eval_dataset
        # Read-ahead loads runs of consecutive tiles: in order, not a DDP rank's every other tile.
        if self.num_workers == 0 and self.read_ahead > 1 and distributed_rank()[1] == 1:
            threads = max(1, min(torch.get_num_threads(), self.read_ahead))
            dataset = ReadAhead(dataset, threads, ahead=self.read_ahead)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def describe(self) -> dict[str, Any]:
        """Facts for the results record's ``dataset`` field."""
        n_eval = len(self.eval_dataset) if self.eval_dataset is not None else None
        return {
            "root": str(self.root),
            "split": self.eval_split,
            "scenes": [s.lower() for s in self.eval_scenes],
            "n_images": n_eval,
            "synthetic": self.synthetic,
        }
