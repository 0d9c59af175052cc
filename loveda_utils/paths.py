"""Where things live: the project's folders (one home for each folder name).

The data root itself is resolved in :mod:`loveda_utils.data.root`. Which results folder a suite
profile writes to by default is the profile's (``loveda_utils/benchmark/profiles.py``), chosen
among the folders below.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (this package lives at its top level).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
#: The project's published runs on LoveDA (tracked): the table the README shows.
RESULTS_DIR = PROJECT_ROOT / "results"
#: A results folder's subfolder of source-only cross-domain runs (models trained on one LoveDA
#: domain, evaluated on both: ``loveda_utils/results/cross_domain.py``). Kept apart from the
#: folder's own runs so that single-domain runs never appear as rows of its main table.
CROSS_DOMAIN_SUBDIR = "cross-domain"
#: The published cross-domain runs (tracked).
CROSS_DOMAIN_RESULTS_DIR = RESULTS_DIR / CROSS_DOMAIN_SUBDIR
#: The quick demo's runs and their rendered comparison (git-ignored): local output of
#: ``./workbook demo``, never the project's results; also where a notebook-03 run on the
#: synthetic mini-LoveDA goes when given no ``results_dir``.
DEMO_RESULTS_DIR = RESULTS_DIR / "demo"
#: The folders holding the project's published runs: no synthetic run is written into them.
PUBLISHED_RESULTS_DIRS: tuple[Path, ...] = (RESULTS_DIR, CROSS_DOMAIN_RESULTS_DIR)
#: The embedded default dataset, generated on demand (git-ignored).
MINI_LOVEDA_DIR = Path(os.environ.get("LOVEDA_MINI_DIR", PROJECT_ROOT / "data" / "mini-loveda"))
#: The environment variable naming a LoveDA root.
ENV_VAR = "LOVEDA_ROOT"
