"""Draw the demo's samples, made in code: three scenes of increasing visual complexity and one short clip.

python llava_prumerge/demo/samples/make_samples.py   # rewrites the PNGs and the GIF next to this file

Drawn procedurally (no photographs, nothing to license) with flat colors, so that each file stays a
few KB: the scenes at LLaVA-1.5's 336x336 input size, the clip at Video-LLaVA's 224x224 with the 8
frames Video-LLaVA samples from a video.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 336
# fmt: off
WORDS = [
    "token", "patch", "merge", "prune", "attention", "vision", "language", "model",
    "image", "outlier", "cluster", "summary", "adaptive", "quartile", "spatial", "sample",
    "layer", "query", "key", "value", "projector", "prompt", "answer",
]
# fmt: on


def sky_with_a_sign() -> Image.Image:
    """Almost nothing to look at: a plain sky, a field, one road sign."""
    image = Image.new("RGB", (SIZE, SIZE), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 262, SIZE, SIZE), fill=(96, 150, 72))
    draw.rectangle((208, 150, 214, 270), fill=(110, 110, 110))  # post
    draw.regular_polygon((211, 130, 36), 8, rotation=22.5, fill=(200, 30, 30), outline=(255, 255, 255))
    draw.text((211, 130), "STOP", fill=(255, 255, 255), anchor="mm", font=ImageFont.load_default(17))
    return image


def page_of_text() -> Image.Image:
    """Detail spread evenly: a title and lines of small text over the whole page."""
    rng = random.Random(1)
    image = Image.new("RGB", (SIZE, SIZE), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.text((20, 14), "Visual Token Reduction", fill=(20, 20, 20), font=ImageFont.load_default(22))
    body = ImageFont.load_default(11)
    for y in range(52, SIZE - 14, 15):
        line = rng.choice(WORDS)
        while draw.textlength(longer := f"{line} {rng.choice(WORDS)}", font=body) < SIZE - 40:
            line = longer
        draw.text((20, y), line, fill=(30, 30, 30), font=body)
    return image.quantize(16).convert("RGB")  # few grey levels: a smaller PNG


def cluttered_scene() -> Image.Image:
    """Many overlapping objects of many colors."""
    rng = random.Random(2)
    image = Image.new("RGB", (SIZE, SIZE), (70, 60, 55))
    draw = ImageDraw.Draw(image)
    for _ in range(90):
        x, y = rng.randrange(-20, SIZE), rng.randrange(-20, SIZE)
        w, h = rng.randrange(12, 70), rng.randrange(12, 70)
        color = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("rectangle", "ellipse", "triangle"))
        if shape == "rectangle":
            draw.rectangle((x, y, x + w, y + h), fill=color, outline=(0, 0, 0))
        elif shape == "ellipse":
            draw.ellipse((x, y, x + w, y + h), fill=color, outline=(0, 0, 0))
        else:
            draw.polygon([(x, y + h), (x + w // 2, y), (x + w, y + h)], fill=color, outline=(0, 0, 0))
    return image


def moving_shapes(frames: int = 8, size: int = 224) -> list[Image.Image]:
    """A clip where only a few things move: three bright shapes crossing a dark, still room in straight lines."""
    # (shape, color, first top-left corner, step per frame): they cross paths midway
    movers = [
        ("ellipse", (235, 60, 50), (14, 150), (22, -12)),
        ("rectangle", (250, 210, 40), (170, 24), (-18, 16)),
        ("triangle", (60, 200, 240), (90, 176), (4, -20)),
    ]
    clip = []
    for frame in range(frames):
        image = Image.new("RGB", (size, size), (28, 30, 42))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, size - 30, size, size), fill=(48, 44, 40))  # the floor
        for shape, color, (x, y), (dx, dy) in movers:
            left, top = x + dx * frame, y + dy * frame
            if shape == "triangle":
                draw.polygon([(left, top + 36), (left + 18, top), (left + 36, top + 36)], fill=color)
            else:
                getattr(draw, shape)((left, top, left + 36, top + 36), fill=color)
        clip.append(image)
    return clip


# Numbered from plain to busy, so that the demo shows them in that order; the clip last.
SAMPLES = {"1_sky_sign": sky_with_a_sign, "2_text_page": page_of_text, "3_cluttered": cluttered_scene}
CLIPS = {"4_moving_shapes": moving_shapes}
FRAME_MILLISECONDS = 120  # about 8 frames a second (GIF delays count hundredths of a second)

if __name__ == "__main__":
    folder = Path(__file__).parent
    for name, make in SAMPLES.items():
        path = folder / f"{name}.png"
        make().quantize(256).save(path, optimize=True)  # a palette PNG: these scenes have few colors
        print(f"{path}: {path.stat().st_size / 1024:.1f} KB")
    for name, make in CLIPS.items():
        path = folder / f"{name}.gif"
        first, *rest = make()
        first.save(
            path, save_all=True, append_images=rest, duration=FRAME_MILLISECONDS, loop=0, optimize=True
        )
        print(f"{path}: {path.stat().st_size / 1024:.1f} KB")
