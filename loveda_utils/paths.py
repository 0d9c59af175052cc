"""Where things live: the project's folders (one home for each folder name).

The data root itself is resolved in :mod:`loveda_utils.data.root`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (this package lives at its top level).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
RESULTS_DIR = PROJECT_ROOT / "results"
#: The embedded default dataset, generated on demand (git-ignored).
MINI_LOVEDA_DIR = Path(os.environ.get("LOVEDA_MINI_DIR", PROJECT_ROOT / "data" / "mini-loveda"))
#: The environment variable naming a LoveDA root.
ENV_VAR = "LOVEDA_ROOT"
