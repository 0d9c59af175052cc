"""LoveDADataModule: batches, up-front validation, determinism, default root."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loveda_utils import paths
from loveda_utils.data import root as data_root
from loveda_utils.data.datamodule import LoveDADataModule
from loveda_utils.errors import ConfigError, DatasetNotFoundError, InvalidDataError


def test_training_batches_are_uint8_crops(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, batch_size=2, crop_size=32, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 3, 32, 32)
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (2, 32, 32)
    assert set(torch.unique(batch["mask"]).tolist()) <= set(range(7)) | {255}
    assert set(batch["scene"]) <= {"Urban", "Rural"} and len(batch["name"]) == 2


def test_eval_batches_are_whole_tiles(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, eval_split="val", eval_scenes="rural", num_workers=0,
                          limit_eval_images=1)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 1 and batches[0]["image"].shape == (1, 3, 64, 64)
    assert batches[0]["scene"] == ["Rural"]
    assert dm.describe() == {"root": str(tiny_tree), "split": "Val", "scenes": ["rural"],
                             "n_images": 1, "synthetic": False}


def test_test_split_has_no_masks(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, eval_split="test", num_workers=0)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert "mask" not in batch and batch["split"] == ["Test"]


def _first_batch(root: Path, seed: int, workers: int) -> dict:
    dm = LoveDADataModule(root, batch_size=2, crop_size=32, num_workers=workers, seed=seed)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_same_seed_same_batches_with_workers(tiny_tree: Path) -> None:
    a, b = _first_batch(tiny_tree, 7, 2), _first_batch(tiny_tree, 7, 2)
    assert a["name"] == b["name"]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    c = _first_batch(tiny_tree, 8, 2)
    assert not torch.equal(a["image"], c["image"])


def test_invalid_data_refused_up_front(tiny_tree: Path) -> None:
    (tiny_tree / "Train" / "Rural" / "masks_png" / "2.png").unlink()
    dm = LoveDADataModule(tiny_tree, crop_size=32, num_workers=2)
    with pytest.raises(InvalidDataError, match=r"Train/Rural/images_png/2\.png: image without mask") as info:
        dm.setup("fit")
    assert len(info.value.problems) == 1


@pytest.mark.parametrize(("dtype", "value", "message"), [
    (np.uint16, 257, "mask is 16-bit"),  # 257 would wrap round to 1 (background) in uint8
    (np.uint8, 9, "mask values outside 0..7: 9"),
])
def test_default_check_refuses_bad_mask_values(tiny_tree: Path, dtype, value: int, message: str) -> None:
    path = tiny_tree / "Train" / "Urban" / "masks_png" / "1.png"
    mask = np.asarray(Image.open(path)).astype(dtype)
    mask[5, 5] = value
    Image.fromarray(mask).save(path)
    dm = LoveDADataModule(tiny_tree, crop_size=32, num_workers=0)
    with pytest.raises(InvalidDataError, match=rf"Train/Urban/masks_png/1\.png: {message}"):
        dm.setup("fit")
    assert dm.train_dataset is None


def test_crop_larger_than_tile(tiny_tree: Path) -> None:
    dm = LoveDADataModule(tiny_tree, crop_size=512, num_workers=0)
    with pytest.raises(ConfigError, match=r"crop_size=512 is larger than the tiles \(64x64"):
        dm.setup("fit")


def test_root_resolution(tmp_path: Path, tiny_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match="data_root="):
        data_root.resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv("LOVEDA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DatasetNotFoundError, match=r"\$LOVEDA_ROOT"):
        data_root.resolve_data_root(None)
    monkeypatch.setenv("LOVEDA_ROOT", str(tiny_tree))
    assert data_root.resolve_data_root(None) == tiny_tree


def test_default_root_is_generated_mini_loveda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loveda_utils.data import synthetic

    target = tmp_path / "mini"
    monkeypatch.setattr(paths, "MINI_LOVEDA_DIR", target)
    # The default tree at test size: same generator, fewer and smaller tiles.
    monkeypatch.setattr(synthetic, "DEFAULT_TILES", 2)
    monkeypatch.setattr(synthetic, "DEFAULT_SIZE", 64)
    assert data_root.resolve_data_root(None) == target and synthetic.is_synthetic(target)
    stamp = (target / synthetic.MARKER_NAME).stat().st_mtime_ns
    assert data_root.resolve_data_root(None) == target  # reused, not regenerated
    assert (target / synthetic.MARKER_NAME).stat().st_mtime_ns == stamp
    dm = LoveDADataModule(None, num_workers=0, crop_size=32)
    assert dm.synthetic and dm.root == target
    # A tree from other settings (or an older generator) is replaced by the default one.
    monkeypatch.setattr(synthetic, "DEFAULT_SEED", 5)
    data_root.ensure_mini_loveda()
    assert synthetic.read_marker(target)["seed"] == 5


# -- loading: channels-last collate and read-ahead -------------------------------------------


def _eval_dataset(root: Path):
    from loveda_utils.data.dataset import LoveDASegmentation
    from loveda_utils.data.transforms import eval_transforms

    return LoveDASegmentation(root, "train", "both", eval_transforms())


def test_collate_keeps_decoded_images_channels_last(tiny_tree: Path) -> None:
    from torch.utils.data import default_collate

    from loveda_utils.data.datamodule import collate

    samples = [_eval_dataset(tiny_tree)[i] for i in range(3)]
    assert samples[0]["image"].shape == (3, 64, 64)  # stored as decoded, [H, W, 3]
    batch, reference = collate(samples), default_collate(samples)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch["image"], reference["image"])
    assert torch.equal(batch["mask"], reference["mask"])
    assert batch["name"] == reference["name"] and batch["scene"] == reference["scene"]
    # Images in another layout (e.g. after a transform made them NCHW) are stacked as usual.
    nchw = [{**s, "image": s["image"].contiguous()} for s in samples]
    assert collate(nchw)["image"].is_contiguous()
    # One sample in the main process: the batch is a view of it, equal to default_collate's.
    one, reference = collate(samples[:1]), default_collate(samples[:1])
    assert one["image"].data_ptr() == samples[0]["image"].data_ptr()
    assert one.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(one[key], value) and one[key].dtype == value.dtype
        else:
            assert one[key] == value


class _Recorder(torch.utils.data.Dataset):
    """A dataset that records which thread loaded which index; index 5 is a broken tile."""

    def __init__(self, n: int) -> None:
        self.n, self.loaded, self.threads = n, [], set()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.loaded.append(i)
        self.threads.add(threading.get_ident())
        time.sleep(0.05)  # a slow decode: the helper thread wakes up long before the burst ends
        if i == 5:
            raise InvalidDataError(f"tile {i}: unreadable or truncated PNG")
        return {"i": i}


def test_read_ahead_loads_bursts_on_threads_and_keeps_errors_per_tile() -> None:
    from loveda_utils.data.read_ahead import ReadAhead

    data = _Recorder(10)
    ahead = ReadAhead(data, threads=2, ahead=4)
    assert [ahead[i]["i"] for i in range(5)] == [0, 1, 2, 3, 4]
    assert sorted(data.loaded) == [0, 1, 2, 3, 4, 5, 6, 7]  # two bursts of 4
    assert len(data.threads) == 2  # the caller and one helper
    with pytest.raises(InvalidDataError, match="tile 5"):  # raised for tile 5, and only there
        ahead[5]
    assert ahead[6]["i"] == 6 and ahead[-1]["i"] == 9  # later tiles still served; negative index
    assert ahead[2]["i"] == 2  # out of order: loaded again (a new burst)
    with pytest.raises(IndexError):
        ahead[10]
    clone = pickle.loads(pickle.dumps(ReadAhead(_Recorder(3), 2)))
    assert clone._pool is None and clone.ahead == 8  # 4 per thread by default


@pytest.mark.parametrize(("threads", "ahead"), [(0, None), (2, 0), (1.5, None), (2, True)])
def test_read_ahead_refuses_bad_settings(threads, ahead) -> None:
    from loveda_utils.data.read_ahead import ReadAhead

    with pytest.raises(ValueError, match="must be a positive int"):
        ReadAhead(_Recorder(3), threads, ahead)


def test_eval_loader_reads_ahead_with_identical_batches(tiny_tree: Path) -> None:
    from loveda_utils.data.read_ahead import ReadAhead

    def batches(read_ahead: int | None) -> tuple[list[dict], object]:
        dm = LoveDADataModule(tiny_tree, eval_split="val", num_workers=0, read_ahead=read_ahead)
        loader = dm.val_dataloader()
        return list(loader), loader.dataset

    plain, plain_data = batches(1)
    ahead, ahead_data = batches(3)
    assert not isinstance(plain_data, ReadAhead)
    assert isinstance(ahead_data, ReadAhead) and ahead_data.ahead == 3
    assert len(plain) == len(ahead) == 4
    for a, b in zip(plain, ahead, strict=True):
        assert a["name"] == b["name"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"])
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="read_ahead must be a positive int"):
            LoveDADataModule(tiny_tree, read_ahead=bad)
    # Loader workers decode in parallel already: no read-ahead on top of them.
    dm = LoveDADataModule(tiny_tree, eval_split="val", num_workers=1)
    assert not isinstance(dm.val_dataloader().dataset, ReadAhead)


# -- processes: workers from the cores at hand, one shard per DDP rank -----------------------


def _cores(monkeypatch: pytest.MonkeyPatch, affinity: int, cuda: bool = True) -> None:
    """A machine of 128 cores of which this process may run on ``affinity``."""
    from loveda_utils import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 128)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.delenv(runtime.CORES_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_default_workers_follow_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from loveda_utils.data.datamodule import default_num_workers
    from loveda_utils.runtime import CORES_ENV

    _cores(monkeypatch, affinity=32)
    # All but the core of the main process, with no fixed cap (it used to stop at 8).
    assert default_num_workers() == 31
    assert default_num_workers(processes=2) == 15  # two DDP ranks on this machine
    monkeypatch.setenv(CORES_ENV, "16")  # the suite's share for one of two models side by side
    assert default_num_workers() == 15
    monkeypatch.setenv(CORES_ENV, "64")  # a budget never exceeds the affinity
    assert default_num_workers() == 31
    monkeypatch.setenv(CORES_ENV, "many")
    with pytest.raises(ValueError, match=r"\$LOVEDA_CORES='many': must be a positive number"):
        default_num_workers()
    _cores(monkeypatch, affinity=4)  # a scheduler's 4 cores of the 128 (os.cpu_count)
    assert default_num_workers() == 3
    _cores(monkeypatch, affinity=6, cuda=False)  # CPU: the cores torch's threads leave free
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert default_num_workers() == 2


def test_datamodule_workers_are_shared_by_the_ranks_on_this_machine(
    tiny_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cores(monkeypatch, affinity=32)
    dm = LoveDADataModule(tiny_tree)
    assert dm.num_workers == 31
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's 4 ranks on this node
    assert dm.num_workers == 7
    dm.trainer = type("Trainer", (), {"num_devices": 2})()  # Lightning's, once attached
    assert dm.num_workers == 15
    assert LoveDADataModule(tiny_tree, num_workers=3).num_workers == 3  # asked for: kept


def test_rank_seeds_differ_per_rank_and_keep_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from loveda_utils.data.datamodule import rank_seed

    assert rank_seed(7, 0) == 7  # a single process draws what it always drew
    seeds = {rank_seed(7, rank) for rank in range(8)} | {rank_seed(8, rank) for rank in range(8)}
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(7, 3) == rank_seed(7, 3)


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    from loveda_utils.data import datamodule

    monkeypatch.setattr(datamodule, "distributed_rank", lambda: (rank, world))


def test_ddp_shards_train_padded_and_evaluate_each_tile_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_tree

    root = write_tree(tmp_path / "loveda", n=3)  # 6 training tiles, 6 val tiles
    train: list[list[str]] = []
    val: list[list[str]] = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        dm = LoveDADataModule(root, batch_size=2, crop_size=32, num_workers=0, seed=1,
                              limit_eval_images=3)
        train.append([n for b in dm.train_dataloader() for n in b["name"]])
        val.append([n for b in dm.val_dataloader() for n in b["name"]])
    assert len(train[0]) == len(train[1]) == 2 and not set(train[0]) & set(train[1])
    # An odd number of tiles: 2 + 1, every tile once (a padded shard counts one twice).
    _as_rank(monkeypatch, 0, 1)
    single = LoveDADataModule(root, num_workers=0, limit_eval_images=3).val_dataloader()
    assert (len(val[0]), len(val[1])) == (2, 1)
    assert sorted(val[0] + val[1]) == sorted(n for b in single for n in b["name"])
    _as_rank(monkeypatch, 0, 4)
    dm = LoveDADataModule(root, num_workers=0, limit_eval_images=3)
    with pytest.raises(ConfigError, match=r"3 tile\(s\) for 4 DDP processes.*limit_eval_images"):
        dm.val_dataloader()
