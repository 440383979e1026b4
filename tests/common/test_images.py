"""Image files as the tools read them: sizes checked before decoding, 16-bit images scaled, clear errors."""

import numpy as np
import pytest
from PIL import Image

from llava_prumerge.common.images import MAX_ASPECT_RATIO, MAX_SIDE, open_image
from llava_prumerge.errors import MissingInputError, VisualInputError


def test_16_bit_grey_levels_are_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)  # 0 .. 64512
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    image = open_image(tmp_path / "ramp16.png")
    assert image.mode == "RGB"
    grey = np.asarray(image)[..., 0].astype(int)
    assert grey.min() == 0 and 250 <= grey.max() <= 255
    assert len(np.unique(grey)) == 64  # every level kept apart (clipping gives almost all 255)


@pytest.mark.parametrize(
    "size, message",
    [
        ((MAX_SIDE + 1, 16), f"larger than {MAX_SIDE} on its longest side"),
        ((100_000, 1), f"larger than {MAX_SIDE}"),
        ((MAX_ASPECT_RATIO * 10 + 1, 10), f"more elongated than {MAX_ASPECT_RATIO}:1"),
    ],
)
def test_huge_and_elongated_images_are_refused_from_the_header(tmp_path, size, message):
    path = tmp_path / "image.png"
    Image.new("L", size).save(path)
    with pytest.raises(VisualInputError, match=message):
        open_image(path)


def test_missing_empty_and_unreadable_files_are_clear(tmp_path):
    with pytest.raises(MissingInputError, match="No image at"):
        open_image(tmp_path / "nothing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(VisualInputError, match="not readable as an image"):
        open_image(tmp_path / "notes.png")
