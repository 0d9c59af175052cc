"""Download the LoveDA release (``python -m loveda_utils download-data ROOT``).

Through torchgeo's :class:`~torchgeo.datasets.LoveDA` (``download=True, checksum=True``): it
fetches ``Train.zip``, ``Val.zip`` and ``Test.zip`` from Zenodo with a progress bar, into a
temporary file that replaces the zip only when complete, checks each zip's MD5 and extracts it
into ``ROOT``. A split whose ``Urban/`` and ``Rural/`` folders are already there is not fetched
again; a zip already in ``ROOT`` with the right MD5 is extracted without downloading. The caller
then checks the tree against the release manifest (:func:`~loveda_utils.data.validation.check_tree`).
"""

from __future__ import annotations

import hashlib
import urllib.error
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import DatasetNotFoundError, InvalidDataError
from .classes import SCENES, SPLITS, normalize_split


def release_archive(split: str) -> dict[str, str]:
    """torchgeo's ``url``, ``filename`` and ``md5`` of one split's zip."""
    from torchgeo.datasets import LoveDA

    return dict(LoveDA.info_dict[normalize_split(split).lower()])


def download_release(
    root: str | Path,
    splits: Iterable[str] = SPLITS,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Download and extract the zips of ``splits`` into ``root``; return the splits now there.

    Raises:
        InvalidDataError: a downloaded zip whose MD5 is not the release's (the file is removed),
            or a zip that did not extract to ``<Split>/Urban`` and ``<Split>/Rural``.
        DatasetNotFoundError: the server could not be reached or refused the file.
    """
    from torchgeo.datasets import LoveDA
    from torchgeo.datasets.errors import DatasetNotFoundError as TorchgeoNotFound

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    done = []
    for split in [normalize_split(s) for s in splits]:
        archive = release_archive(split)
        zip_path = root / archive["filename"]
        if all((root / split / scene).is_dir() for scene in SCENES):
            log(f"{split}: {root / split} already holds Urban/ and Rural/; not downloaded again")
        elif zip_path.is_file():
            log(f"{split}: {zip_path} is there: extracted if its MD5 is {archive['md5']}, "
                "else downloaded again")
        else:
            log(f"{split}: downloading {archive['filename']} from {archive['url']} "
                f"(MD5 {archive['md5']}) into {root}")
        try:
            LoveDA(root=str(root), split=split.lower(),  # type: ignore[arg-type]
                   scene=[s.lower() for s in SCENES],  # type: ignore[misc]
                   download=True, checksum=True)
        except RuntimeError as exc:  # torchgeo: "Downloaded file ... is corrupted/incomplete"
            raise _bad_archive(zip_path, archive, exc) from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise DatasetNotFoundError(
                f"{archive['filename']}: could not download {archive['url']} ({exc}). Check the "
                f"network, or download it by hand into {root} and run download-data again "
                "(a zip with the right MD5 is extracted without downloading)."
            ) from exc
        except TorchgeoNotFound as exc:
            raise InvalidDataError(
                f"{zip_path}: extracted, but {root / split} has no Urban/ and Rural/ folders: "
                "this is not the LoveDA release zip"
            ) from exc
        log(f"{split}: extracted to {root / split}")
        done.append(split)
    zips = [p for p in (root / release_archive(s)["filename"] for s in done) if p.is_file()]
    if zips:
        size = sum(p.stat().st_size for p in zips) / 1e9
        log(f"the zips ({', '.join(p.name for p in zips)}: {size:.2f} GB) are no longer needed "
            f"and can be deleted from {root}")
    return done


def _bad_archive(zip_path: Path, archive: dict[str, str], exc: Exception) -> InvalidDataError:
    if not zip_path.is_file():
        return InvalidDataError(f"{zip_path}: download from {archive['url']} failed ({exc}); "
                                "run download-data again")
    with open(zip_path, "rb") as f:
        actual = hashlib.file_digest(f, "md5").hexdigest()
    zip_path.unlink()  # a file known to be wrong must not pass for the release later
    return InvalidDataError(
        f"{zip_path}: MD5 {actual} is not the release's {archive['md5']} (downloaded from "
        f"{archive['url']}); the file was removed. Run download-data again; if it repeats, the "
        "server's file has changed."
    )
