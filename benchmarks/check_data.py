"""check-data's speed per tile, mode by mode: the figures behind ``check-data --help``.

Times :func:`loveda_utils.data.validation.check_tree` on the same tiles in each mode (quick and
full, compared with the release manifest or not, on one thread and on the default threads),
best of ``--passes`` passes after one warm-up pass (files in the page cache), and projects each
to the whole release (5,987 tiles). Wall time and the process's CPU time are both shown: on a
machine shared with other jobs the CPU time of the one-thread runs is the steadier figure.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/check_data.py [ROOT] [--passes 5]

Default root: the real LoveDA sample (``$LOVEDA_SAMPLE``, else ``../shared/loveda_sample``;
Train/Rural, 16 tiles).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from loveda_utils.data import manifest
from loveda_utils.data.validation import check_tree
from loveda_utils.paths import PROJECT_ROOT

DEFAULT = Path(os.environ.get("LOVEDA_SAMPLE", PROJECT_ROOT.parent / "shared" / "loveda_sample"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(DEFAULT))
    parser.add_argument("--splits", default="Train")
    parser.add_argument("--scenes", default="Rural")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args(argv)
    root, splits, scenes = Path(args.root), args.splits.split(","), args.scenes.split(",")
    release_tiles = len(manifest.release_tiles())  # loads the manifest once, outside the timer
    tiles = sum(s.n_images for s in check_tree(root, splits, scenes, level="full").summaries)
    threads = os.cpu_count() or 1
    print(f"{root}: {tiles} tiles ({','.join(splits)} / {','.join(scenes)}), best of {args.passes}")
    print(f"{'mode':<28} {'threads':>7} {'wall ms/tile':>12} {'CPU ms/tile':>11} {'release (s, wall)':>17}")
    for level, release in (("quick", True), ("quick", False), ("full", True), ("full", False)):
        for workers in sorted({1, threads}):
            wall = cpu = float("inf")
            for _ in range(args.passes):
                start, start_cpu = time.perf_counter(), time.process_time()
                check_tree(root, splits, scenes, level=level, workers=workers, release=release)
                wall = min(wall, time.perf_counter() - start)
                cpu = min(cpu, time.process_time() - start_cpu)
            mode = f"{level}{'' if release else ' --no-manifest'}"
            print(f"{mode:<28} {workers:>7} {1000 * wall / tiles:>12.2f} {1000 * cpu / tiles:>11.2f} "
                  f"{wall / tiles * release_tiles:>17.1f}")


if __name__ == "__main__":
    main()
