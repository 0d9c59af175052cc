"""The data root, resolved once for every entry point (notebooks, CLI, tests).

An explicit ``data_root`` wins, then ``$LOVEDA_ROOT``, then the embedded mini-LoveDA, which is
generated on first use (deterministic, a few seconds) under ``data/mini-loveda``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import paths
from ..errors import DatasetNotFoundError
from . import synthetic


def ensure_mini_loveda(path: str | Path | None = None) -> Path:
    """Return the embedded mini-LoveDA, generating it with the default settings if absent or
    made by another generator version or other settings (so its bytes are always the default's)."""
    path = Path(path) if path is not None else paths.MINI_LOVEDA_DIR
    wanted = {"version": synthetic.GENERATOR_VERSION, "tiles": synthetic.DEFAULT_TILES,
              "size": synthetic.DEFAULT_SIZE, "seed": synthetic.DEFAULT_SEED}
    marker = synthetic.read_marker(path) if synthetic.is_synthetic(path) else None
    if marker is None or any(marker.get(k) != v for k, v in wanted.items()):
        # overwrite replaces only a folder carrying the mini-LoveDA marker, never real data.
        synthetic.generate_mini_loveda(path, tiles=wanted["tiles"], size=wanted["size"],
                                       seed=wanted["seed"], overwrite=marker is not None)
    return path


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The LoveDA root to use: ``data_root``, else ``$LOVEDA_ROOT``, else the mini-LoveDA.

    Raises:
        DatasetNotFoundError: when the root given (or the one in ``$LOVEDA_ROOT``) is not a folder.
    """
    if data_root is None or str(data_root) == "":
        env = os.environ.get(paths.ENV_VAR, "")
        if not env:
            return ensure_mini_loveda()
        data_root, origin = env, f"${paths.ENV_VAR}"
    else:
        origin = "data_root"
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{origin}={str(data_root)!r} is not a folder. Point it at a LoveDA root holding "
            "Train/, Val/ and Test/ (each with Urban/ and Rural/), as extracted from the released "
            "Train.zip, Val.zip and Test.zip, or leave it unset to use the embedded mini-LoveDA."
        )
    return root
