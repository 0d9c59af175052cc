"""The LoveDA dataset, read through torchgeo with this package's label convention."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchgeo.datasets import LoveDA

from ..errors import DatasetNotFoundError
from .classes import normalize_scenes, normalize_split, raw_to_train
from .layout import IMAGES_DIR, loader_images, mask_for
from .pngio import read_png

Sample = dict[str, Any]


class LoveDASegmentation(LoveDA):
    """LoveDA land-cover segmentation tiles, as released, with training labels 0..6.

    Dataset format (as released and as torchgeo's ``LoveDA(download=False)`` reads it)::

        <root>/{Train,Val,Test}/{Urban,Rural}/images_png/<id>.png   1024x1024 RGB
        <root>/{Train,Val}/{Urban,Rural}/masks_png/<id>.png         1024x1024 single channel

    Dataset classes (raw mask value -> training label):

    0. no-data -> 255 (ignored by losses and metrics)
    1. background -> 0
    2. building -> 1
    3. road -> 2
    4. water -> 3
    5. barren -> 4
    6. forest -> 5
    7. agriculture -> 6

    5,987 tiles of 0.3 m Google Earth imagery over Nanjing, Changzhou and Wuhan: Train 2,522
    (1,156 urban, 1,366 rural), Val 1,669 (677, 992), Test 1,796 (820, 976; no masks).

    Samples are dicts: ``image`` uint8 ``[3, H, W]``, ``mask`` uint8 ``[H, W]`` (not for Test),
    ``scene``, ``split`` and ``name`` (the file name). Images stay uint8: models normalise them.

    Built on torchgeo's :class:`~torchgeo.datasets.LoveDA`; never downloads. Tiles are listed as
    torchgeo lists them (``images_png/*.png``, in path order: the listing ``check-data`` counts,
    :func:`~loveda_utils.data.layout.loader_images`), but each mask path is derived from its
    image's own folder (:func:`~loveda_utils.data.layout.mask_for`) rather than by replacing
    ``images_png`` in the whole path, so a root whose path contains ``images_png`` works.

    If you use this dataset in your research, please cite:

    * Junjue Wang, Zhuo Zheng, Ailong Ma, Xiaoyan Lu, Yanfei Zhong. "LoveDA: A Remote Sensing
      Land-Cover Dataset for Domain Adaptive Semantic Segmentation". NeurIPS 2021 Datasets and
      Benchmarks. https://arxiv.org/abs/2110.08733
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        scenes: str | Sequence[str] = "both",
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        """Initialise the dataset.

        Args:
            root: LoveDA root folder (holding ``Train/``, ``Val/``, ``Test/``).
            split: ``"train"``, ``"val"`` or ``"test"`` (case-insensitive).
            scenes: ``"urban"``, ``"rural"``, ``"both"`` or a list of them.
            transforms: applied to each sample dict (see :mod:`loveda_utils.data.transforms`).

        Raises:
            DatasetNotFoundError: if the split/scene folders are not under ``root``.
        """
        self.split_dir = normalize_split(split)
        self.scene_dirs = normalize_scenes(scenes)
        root = Path(root)
        missing = [root / self.split_dir / s / IMAGES_DIR for s in self.scene_dirs
                   if not (root / self.split_dir / s / IMAGES_DIR).is_dir()]
        if missing:
            raise DatasetNotFoundError(
                f"LoveDA not found: {', '.join(map(str, missing))} missing (root={str(root)!r}, "
                f"split={split!r}, scenes={scenes!r}). Point root/data_root/$LOVEDA_ROOT at the "
                "folder that holds Train/, Val/, Test/ from the released zips, or run "
                "`python -m loveda_utils make-synthetic OUT` for a synthetic tree."
            )
        super().__init__(
            root=str(root),
            split=self.split_dir.lower(),  # type: ignore[arg-type]
            scene=[s.lower() for s in self.scene_dirs],  # type: ignore[misc]
            transforms=None,
            download=False,
            checksum=False,
        )
        self.root = root
        self.sample_transforms = transforms
        self.has_masks = self.split_dir != "Test"

    def _load_files(self, scene_paths: list[str], split: str) -> list[dict[str, str]]:
        """Image (and mask) paths per tile, as torchgeo lists them but with masks beside each image."""
        images = sorted(str(p) for s in scene_paths for p in loader_images(s))
        if split == "test":
            return [{"image": image} for image in images]
        return [{"image": image, "mask": str(mask_for(image))} for image in images]

    def __getitem__(self, index: int) -> Sample:
        files = self.files[index]
        image_path = Path(files["image"])
        sample: Sample = {
            "image": self._load_image(image_path),
            "scene": image_path.parent.parent.name,
            "split": self.split_dir,
            "name": image_path.name,
        }
        if self.has_masks:
            sample["mask"] = self._load_target(Path(files["mask"]))
        if self.sample_transforms is not None:
            sample = self.sample_transforms(sample)
        return sample

    def _load_image(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """An RGB PNG as uint8 ``[3, H, W]`` (torchgeo's loader returns float; we keep bytes).

        The tensor is a view of the decoded ``[H, W, 3]`` array, i.e. stored channels-last:
        no transposing copy here, and :func:`~loveda_utils.data.datamodule.collate` keeps the layout
        for the model, which runs channels-last on the CPU anyway (``.contiguous()`` gives the
        NCHW layout).
        """
        return torch.from_numpy(read_png(path, "image")).permute(2, 0, 1)

    def _load_target(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """A raw mask as training labels uint8 ``[H, W]`` (0..6, 255 for no-data)."""
        return torch.from_numpy(raw_to_train(read_png(path, "mask")))

    def names(self) -> list[str]:
        """Image file names in dataset order."""
        return [Path(f["image"]).name for f in self.files]


__all__ = ["LoveDASegmentation"]
