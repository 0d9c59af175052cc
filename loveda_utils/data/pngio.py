"""Reading LoveDA's PNG tiles: libpng + zlib-ng through imagecodecs, Pillow for anything else.

Decoding is the one cost of evaluation that the model does not pay: on a CPU whose cores the
forward pass already keeps busy it adds straight to every tile. imagecodecs' ``png_decode``
decodes real LoveDA tiles faster than Pillow, with the same pixels (``benchmarks/decoders.py``;
its table in ``benchmarks/RESULTS.md``, "PNG decoders compared"). It takes the two formats
LoveDA uses (8-bit RGB images, 8-bit greyscale masks, read from the IHDR chunk first); every
other PNG (palette, 16-bit, alpha, transparency) goes through Pillow exactly as before
(:func:`read_png_pillow`), so both readers give the same arrays for any file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import imagecodecs
import numpy as np
from PIL import Image

from ..errors import InvalidDataError

__all__ = ["PNG_SIGNATURE", "png_header", "read_png", "read_png_pillow", "unreadable_message"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB = 0, 2  # PNG colour types

Kind = Literal["image", "mask", "any"]


def unreadable_message(exc: BaseException) -> str:
    """The message for a PNG that cannot be decoded; shared with ``check-data``."""
    return f"unreadable or truncated PNG ({type(exc).__name__}: {exc})"


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """``(width, height, bit depth, colour type)`` from a PNG's IHDR chunk; ``None`` if not a PNG."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    return width, height, data[24], data[25]


def _fast(data: bytes, kind: Kind) -> np.ndarray | None:
    """imagecodecs' decode for 8-bit RGB (images) or greyscale (masks), else ``None``."""
    header = png_header(data)
    if header is None or header[2] != 8:
        return None
    expected = {"image": (_RGB,), "mask": (_GREY,), "any": (_RGB, _GREY)}[kind]
    if header[3] not in expected:
        return None
    array = imagecodecs.png_decode(data)  # releases the GIL: threads decode in parallel
    width, height = header[0], header[1]
    # libpng may expand a tRNS chunk into alpha where Pillow keeps RGB: then Pillow decides.
    want = (height, width, 3) if header[3] == _RGB else (height, width)
    if array.dtype != np.uint8 or array.shape != want:
        return None
    return array


def read_png_pillow(path: str | os.PathLike[str], kind: Kind = "any") -> np.ndarray:
    """The same array as :func:`read_png`, decoded by Pillow (the reader before this module)."""
    with Image.open(path) as img:
        if kind == "image" and img.mode != "RGB":
            raise InvalidDataError(f"{path}: image is not 3-channel RGB (mode {img.mode})")
        return np.array(img)  # a copy: torch needs a writable buffer


def read_png(path: str | os.PathLike[str], kind: Kind = "any") -> np.ndarray:
    """Decode a PNG to a writable uint8 array: ``[H, W, 3]`` for RGB, ``[H, W]`` for masks.

    Args:
        path: the file.
        kind: ``"image"`` (must be RGB), ``"mask"`` (any single-band PNG, returned as stored)
            or ``"any"``.

    Raises:
        InvalidDataError: naming the file, if it is missing, not RGB where an image is
            expected, or cannot be decoded (the message ``check-data`` prints).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidDataError(f"{path}: file missing (image without mask?)") from exc
    except OSError as exc:
        raise InvalidDataError(f"{path}: {unreadable_message(exc)}") from exc
    try:
        array = _fast(data, kind)
        return array if array is not None else read_png_pillow(path, kind)
    except InvalidDataError:
        raise
    except (imagecodecs.PngError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidDataError(f"{path}: {unreadable_message(exc)}") from exc
