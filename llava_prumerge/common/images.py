"""Image files as the tools read them (demo, visualize, training data, evaluation): checked before any work.

LLaVA-1.5 pads an image to a square before resizing it, so a very long or very thin image costs
memory in proportion to the square of its longest side (100000 x 1 would ask for 28 GB). Sizes and
aspect ratios are therefore checked from the file's header, before decoding, against the limits
below; 16-bit images are scaled to 8 bits rather than clipped to white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MissingInputError, VisualInputError

MAX_SIDE = 8192  # pixels; a padded square of this side is about 200 MB of RGB
MAX_ASPECT_RATIO = 32  # longest side / shortest side
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL opens 16-bit PNG/TIFF in one of these


def check_image_size(width: int, height: int, name: str) -> None:
    """Refuse empty, oversized and extremely elongated images, naming the limit and the fix."""
    if width < 1 or height < 1:
        raise VisualInputError(f"{name} is empty ({width}x{height} pixels)")
    if max(width, height) > MAX_SIDE:
        raise VisualInputError(
            f"{name} is {width}x{height} pixels, larger than {MAX_SIDE} on its longest side; downscale it first "
            "(the model sees it at its vision tower's resolution anyway)"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise VisualInputError(
            f"{name} is {width}x{height} pixels, more elongated than {MAX_ASPECT_RATIO}:1; crop it into parts "
            "(padded to a square, almost all of it would be padding)"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel; 16-bit grey levels are scaled (PIL's own conversion clips them)."""
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """The image at `path` as 8-bit RGB, its size checked from the header before it is decoded."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"No image at {path}; pass the path of an image file (PNG, JPEG, ...)")
    try:
        with Image.open(path) as image:
            check_image_size(*image.size, name=str(path))
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise VisualInputError(f"{path} is not readable as an image ({error})") from error
