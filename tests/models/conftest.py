"""Fixtures of the model-zoo tests: no network at all, empty caches, uint8 batches."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test loudly instead of hanging."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    import huggingface_hub
    import huggingface_hub.file_download
    import segmentation_models_pytorch.encoders as smp_encoders

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", refuse)
    monkeypatch.setattr(smp_encoders, "hf_hub_download", refuse)


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty torch hub and Hugging Face caches under tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return {
        "checkpoints": tmp_path / "torch" / "hub" / "checkpoints",
        "hf": tmp_path / "hf" / "hub",
    }


@pytest.fixture
def uint8_batch() -> Callable[..., torch.Tensor]:
    """``uint8_batch(h=64, w=64, seed=0)``: one random uint8 RGB image ``[1, 3, h, w]``."""

    def make(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (1, 3, h, w), generator=gen, dtype=torch.uint8)

    return make


@pytest.fixture
def imagenet_0_255() -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std in 0..255 units, what models without EO weights use."""
    from loveda_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return torch.tensor(IMAGENET_MEAN) * 255, torch.tensor(IMAGENET_STD) * 255
