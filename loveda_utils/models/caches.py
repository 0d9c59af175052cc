"""Where weights files live on disk: the torch hub cache and the Hugging Face hub cache.

Loading (:mod:`loveda_utils.models.weights`) only looks here and never downloads; a missing
file is a :class:`~loveda_utils.errors.WeightsError` naming the URL to fetch and where to put
it. Both caches are resolved from the environment at call time (``TORCH_HOME``,
``HF_HUB_CACHE``, ``HF_HOME``), not at import.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import WeightsError


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps its file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (not at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
        "huggingface",
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hf_cached(repo_id: str, filename: str, revision: str) -> Path | None:
    """The cached Hub file, or None; looks on disk only (HF_HUB_OFFLINE semantics)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, filename, cache_dir=str(hf_hub_cache()), revision=revision
    )
    return Path(found) if isinstance(found, str) else None


def hf_url_parts(url: str) -> tuple[str, str, str] | None:
    """``(repo_id, filename, revision)`` of a ``https://hf.co/<repo>/resolve/<rev>/<file>`` URL."""
    parsed = urlparse(url)
    if parsed.netloc not in ("hf.co", "huggingface.co"):
        return None
    parts = parsed.path.strip("/").split("/")
    if len(parts) < 5 or parts[2] != "resolve":
        return None
    return f"{parts[0]}/{parts[1]}", "/".join(parts[4:]), parts[3]


def find_url_file(url: str, what: str) -> Path:
    """The local copy of ``url`` (torch hub cache, else HF cache), or a WeightsError."""
    target = torch_hub_file(url)
    if target.is_file():
        return target
    hf = hf_url_parts(url)
    if hf is not None and (cached := hf_cached(*hf)) is not None:
        return cached
    also = (
        f" (or have it in the Hugging Face cache {hf_hub_cache()}: repo {hf[0]}, "
        f"revision {hf[2]}, file {hf[1]})"
        if hf is not None
        else ""
    )
    raise WeightsError(
        f"{what} not found offline: expected file {target.name!r} at {target}. Nothing is "
        f"downloaded here; on a machine with internet fetch {url} and put it at {target}"
        f"{also}, e.g. `mkdir -p {target.parent} && curl -L -o {target} {url}`. The folder is "
        "torch.hub.get_dir()/checkpoints (set TORCH_HOME to move it). Or pass "
        "pretrained='none' or a path to a local state-dict file."
    )
