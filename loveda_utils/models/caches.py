"""Where weights files live on disk: the torch hub cache and the Hugging Face hub cache.

Loading (:mod:`loveda_utils.models.weights`) only looks here and never downloads; a missing
file is a :class:`~loveda_utils.errors.WeightsError` naming the URL, where to put the file and
the ``fetch-weights`` command that does it (:mod:`loveda_utils.models.fetch`, the one place
that downloads). Both caches are resolved from the environment at call time (``TORCH_HOME``,
``HF_HUB_CACHE``, ``HF_HOME``), not at import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import WeightsError
from .registry import get_spec


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


# --------------------------------------------------------------------------- weight files
# One file that weights need, where the loader finds it, and what the error for a missing one
# says. The loader (weights.py) and the fetch-weights command (fetch.py) both work from
# weights.weight_files(), so they cannot disagree about a file or its place.

#: The command that fetches a model's weights; the missing-file error names it.
FETCH_COMMAND = "python -m loveda_utils fetch-weights"

#: torch hub's file-name convention ``<name>-<sha256 prefix>.<ext>``, which
#: ``torch.hub.load_state_dict_from_url(check_hash=True)`` verifies (its ``HASH_REGEX``
#: accepts any run of hex digits; torchvision and torchgeo names carry 8 or more).
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


@dataclass(frozen=True)
class WeightFile:
    """One file that a model's pretrained weights need.

    Attributes:
        model: Registry name of the model that needs it.
        weights: ``"imagenet"`` or the full torchgeo weights name.
        url: Where the file is published (download.pytorch.org, the Hugging Face Hub).
        path: Where the loader reads it: ``torch.hub.get_dir()/checkpoints/<file>``, or
            ``<HF cache>/models--<org>--<name>/snapshots/<revision>/<filename>``.
        sha256_prefix: The SHA-256 prefix carried by the file name (torch hub convention), or
            None when the name carries none.
        hf_file: ``(repo_id, filename, revision)`` when the file lives in the Hugging Face
            cache (smp's encoders), else None (a torch hub file).
    """

    model: str
    weights: str
    url: str
    path: Path
    sha256_prefix: str | None = None
    hf_file: tuple[str, str, str] | None = None

    @property
    def fetch_command(self) -> str:
        """The ``fetch-weights`` command line that places this file."""
        command = f"{FETCH_COMMAND} --models {self.model}"
        if self.weights != get_spec(self.model).default_pretrained:
            command += f" --pretrained {self.weights}"
        return command


def torch_hub_weight_file(model: str, weights: str, url: str) -> WeightFile:
    """The torch hub cache file of ``url`` (torchvision's and torchgeo's weights)."""
    path = torch_hub_file(url)
    found = _HASH_IN_NAME.search(path.name)
    return WeightFile(model, weights, url, path, found.group(1) if found else None)


def hf_weight_file(
    model: str, weights: str, repo_id: str, filename: str, revision: str
) -> WeightFile:
    """The Hugging Face cache file ``filename`` of ``repo_id`` at commit ``revision``."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    path = hf_hub_cache() / folder / "snapshots" / revision / filename
    url = hf_hub_url(repo_id, filename, revision=revision)
    return WeightFile(model, weights, url, path, hf_file=(repo_id, filename, revision))


def find_weight_file(file: WeightFile) -> Path | None:
    """The local copy the loader would read, or None; looks on disk only."""
    if file.hf_file is not None:
        return hf_cached(*file.hf_file)
    if file.path.is_file():
        return file.path
    # torchgeo publishes on the Hub: a copy in the Hugging Face cache counts as well.
    hub = hf_url_parts(file.url)
    return hf_cached(*hub) if hub is not None else None


def require_weight_file(file: WeightFile) -> Path:
    """The local copy of ``file``, or a WeightsError naming the file, URL, folder and command."""
    found = find_weight_file(file)
    if found is not None:
        return found
    if file.hf_file is not None:
        repo_id, filename, revision = file.hf_file
        where = (
            f"file {filename!r} of the Hugging Face repo {repo_id!r} at revision {revision}, "
            f"expected at {file.path} (the Hugging Face cache: HF_HUB_CACHE, else $HF_HOME/hub)"
        )
    else:
        where = (
            f"file {file.path.name!r}, expected at {file.path} (torch.hub.get_dir()/checkpoints; "
            "set TORCH_HOME to move it)"
        )
    raise WeightsError(
        f"weights {file.weights} of model {file.model!r} not found offline: {where}. Nothing "
        f"is downloaded while a model is built; fetch it with `{file.fetch_command}` (add "
        "--mirror URL or --from DIR where there is no internet), or download "
        f"{file.url} to that place yourself. Or pass pretrained='none' or a path to a local "
        "state-dict file."
    )
