"""PNG decoders side by side on LoveDA tiles: the table behind ``pngio``'s choice.

Times every decoder it can import on the same files, one core, best of ``--passes`` passes over
all files, and checks that each returns Pillow's pixels. Decoders that are not dependencies of
the project (pyspng, OpenCV, pywuffs) are timed when installed and listed as missing otherwise.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decoders.py [PNG or folder ...] [--passes 3]

Default files: the Train/Rural images of the real LoveDA sample, found as the pipeline benchmark
finds it (``$LOVEDA_SAMPLE``, else its default beside the repository).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loveda_utils.data.pngio import read_png, read_png_pillow
from loveda_utils.paths import PROJECT_ROOT

# As benchmarks.pipeline.tiles.DEFAULT_SAMPLE_ROOT: this file runs as a script, without the
# repository root on sys.path to import it from.
SAMPLE_ROOT = Path(
    os.environ.get("LOVEDA_SAMPLE", PROJECT_ROOT.parent / "shared" / "loveda_sample")
)
DEFAULT = SAMPLE_ROOT / "Train" / "Rural" / "images_png"


def decoders() -> dict[str, Callable[[bytes, Path], np.ndarray] | str]:
    """name -> decode(data, path), or the reason it is missing."""
    import imagecodecs
    from torchvision.io import decode_png

    found: dict[str, Callable[[bytes, Path], np.ndarray] | str] = {
        "Pillow, np.array(Image.open(p)) (the loader before pngio)": lambda d, p: read_png_pillow(p),
        "Pillow, decoding alone (Image.open(p).load())": lambda d, p: Image.open(p).load() and None,
        "torchvision io.decode_png": lambda d, p: decode_png(
            torch.frombuffer(bytearray(d), dtype=torch.uint8)
        )
        .permute(1, 2, 0)
        .squeeze(-1)  # greyscale: [H, W] like the others
        .numpy(),
        "imagecodecs png_decode (libpng + zlib-ng)": lambda d, p: imagecodecs.png_decode(d),
        "imagecodecs spng_decode (libspng)": lambda d, p: imagecodecs.spng_decode(d),
        "loveda_utils.data.pngio.read_png (file to array)": lambda d, p: read_png(p),
    }
    try:
        import pyspng

        found["pyspng"] = lambda d, p: pyspng.load(d)
    except ImportError:
        found["pyspng"] = "not installed (pip install pyspng)"
    try:
        import cv2

        cv2.setNumThreads(1)
        found["OpenCV cv2.imdecode (BGR -> RGB)"] = lambda d, p: cv2.imdecode(
            np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED
        )[..., ::-1]
    except ImportError:
        found["OpenCV cv2.imdecode (BGR -> RGB)"] = "not installed (pip install opencv-python-headless)"
    try:
        from pywuffs import ImageDecoderType, PixelFormat
        from pywuffs.aux import ImageDecoder, ImageDecoderConfig

        config = ImageDecoderConfig()
        config.enabled_decoders = [ImageDecoderType.PNG]
        config.pixel_format = PixelFormat.BGR
        wuffs = ImageDecoder(config)
        found["pywuffs (Wuffs, BGR -> RGB)"] = lambda d, p: wuffs.decode(d).pixbuf[..., ::-1]
    except ImportError:
        found["pywuffs (Wuffs, BGR -> RGB)"] = "not installed (pip install pywuffs; builds from source)"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[DEFAULT])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    files = sorted(
        f for p in args.paths for f in ([p] if p.is_file() else p.glob("*.png"))
    )
    if not files:
        raise SystemExit(f"no PNG files under {', '.join(map(str, args.paths))}")
    torch.set_num_threads(1)
    data = [(f.read_bytes(), f) for f in files]
    reference = [np.array(Image.open(f)) for f in files]
    with Image.open(files[0]) as first:
        print(f"# {len(files)} files, {first.width}x{first.height} {first.mode}, first {files[0]}")
    print(f"# one core, best of {args.passes} passes over all files; ms per file")
    for name, decode in decoders().items():
        if isinstance(decode, str):
            print(f"{name:60s} {'-':>8}  {decode}")
            continue
        best = float("inf")
        for _ in range(args.passes):
            start = time.perf_counter()
            for d, path in data:
                decode(d, path)
            best = min(best, (time.perf_counter() - start) / len(data))
        outputs = [decode(d, path) for d, path in data]
        if any(out is None for out in outputs):
            check = "decoding only, no array to compare"
        elif all(np.array_equal(out, ref) for out, ref in zip(outputs, reference, strict=True)):
            check = "same pixels as Pillow"
        else:
            check = "DIFFERENT PIXELS"
        print(f"{name:60s} {1000 * best:8.2f}  {check}")


if __name__ == "__main__":
    main()
