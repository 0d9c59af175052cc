"""``LoveDADataModule``: LoveDA for Lightning (random crops to train, whole tiles to evaluate)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
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
from .read_ahead import ReadAhead
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
        return default_collate(list(samples))
    batch = default_collate([{k: v for k, v in s.items() if k != "image"} for s in samples])
    # default_collate stacks into shared memory inside a loader worker: no extra copy there.
    batch["image"] = default_collate(hwc).permute(0, 3, 1, 2)
    return batch


#: Why a data module built only to evaluate cannot train.
_TRAINING_NEEDS = ("LoveDADataModule({}=None) cannot train: pass the training recipe's crop_size and "
                   "batch_size, as loveda_utils.training.trainer.build_datamodule(recipe, root) does")


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
        batch_size: int | None = None,
        eval_batch_size: int = 1,
        crop_size: int | None = None,
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
            ``batch_size`` and ``crop_size`` are the training recipe's, which
            :func:`loveda_utils.training.trainer.build_datamodule` passes; a data module that
            only evaluates needs neither.
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
        self.train_transform = train_transform or (
            train_transforms(crop_size, fidelity=fidelity) if crop_size is not None else None)
        self.eval_transform = eval_transform or eval_transforms()
        self.limit_eval_images = limit_eval_images
        self.validate = validate
        self.synthetic = is_synthetic(self.root)
        self.train_dataset: LoveDASegmentation | None = None
        self.eval_dataset: LoveDASegmentation | Subset[Sample] | None = None

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
            if self.train_transform is None:
                raise ConfigError(_TRAINING_NEEDS.format("crop_size"))
            self._check("Train", self.train_scenes)
            self.train_dataset = LoveDASegmentation(self.root, "train", self.train_scenes, self.train_transform)
            if self.crop_size is not None:
                crop_fits(self.crop_size, self.tile_size(self.train_dataset))
        if self.eval_dataset is None:
            self._check(self.eval_split, self.eval_scenes)
            full = LoveDASegmentation(self.root, self.eval_split, self.eval_scenes, self.eval_transform)
            self.eval_dataset = full if self.limit_eval_images is None else Subset(
                full, range(min(self.limit_eval_images, len(full))))

    def eval_data(self) -> LoveDASegmentation | Subset[Sample]:
        """The eval split's dataset, built on first use."""
        if self.eval_dataset is None:
            self.setup("validate")
        if self.eval_dataset is None:
            raise RuntimeError("setup('validate') built no eval dataset")
        return self.eval_dataset

    @staticmethod
    def tile_size(dataset: LoveDASegmentation) -> tuple[int, int]:
        """(height, width) of the first tile, read from its PNG header."""
        with Image.open(dataset.files[0]["image"]) as img:
            return img.height, img.width

    def eval_tile_size(self) -> tuple[int, int]:
        """(height, width) of the eval split's tiles (of the full split behind a ``limit_eval_images``)."""
        dataset = self.eval_data()
        return self.tile_size(dataset.dataset if isinstance(dataset, Subset) else dataset)  # type: ignore[arg-type]

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
        if self.batch_size is None:
            raise ConfigError(_TRAINING_NEEDS.format("batch_size"))
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
        dataset: Dataset[Sample] = self.eval_data()
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
