"""Shapes-VQA: a synthetic visual question answering task, defined exactly here (numpy and PIL only).

A small task on which a small LLaVA can be trained on a CPU and on which PruMerge's price in accuracy
can be measured. It is not a standard benchmark; its numbers say nothing about real images.

Images: `image_size` x `image_size` RGB (the model's input size, 72 for the mini model). The background
is light: one color with every channel drawn from [BACKGROUND_LOW, BACKGROUND_HIGH], plain or (half the
images) lightly textured with uniform per-pixel noise of +-TEXTURE_AMPLITUDE. On it lie 1 to 4
objects (uniformly), each a `SHAPES` shape in a `COLORS` color (uniform, independent), whose bounding
box is a square of side round(u * image_size) pixels for u uniform in [0.12, 0.30], placed uniformly
inside the image; bounding boxes are at least one pixel apart (no overlap). A circle fills its box's
inscribed circle, a square its box, a triangle has its apex at the top middle and its base on the
box's bottom edge.

Questions (one-word lowercase answers), in this order per image, each asked when it applies:
  color      "What color is the {shape}?" for one shape that occurs exactly once (uniform among them).
  count      "How many shapes are there?" -> "1".."4" (always).
  exists     "Is there a {color} {shape}?" -> "yes" for a present pair (half the images), else "no":
             half of the "no" questions (when possible) are the hard kind, a shape that is in the image
             in a color it does not have; the others a pair absent from the image, drawn uniformly.
  position   "Is the {color} {shape} on the left or on the right?" -> "left"/"right", for one pair that
             occurs exactly once and lies wholly in one half (box right edge <= side/2, or left edge >=
             side/2), uniform among them.

Splits: image i of a split is drawn from numpy's `default_rng([SPLIT_SEEDS[split], i, attempt])` for
attempt 0, 1, ... until its pixels fall in the split's bucket: SHA-256 of the image bytes, first byte
mod 10: 0 -> test, 1 -> validation, 2..9 -> train. The same image can never be in two splits.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLORS = {  # name -> RGB
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 20),
    "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle")
QUESTION_TYPES = ("color", "count", "exists", "position")
ANSWERS = {
    "color": tuple(COLORS),
    "count": ("1", "2", "3", "4"),
    "exists": ("yes", "no"),
    "position": ("left", "right"),
}
TEMPLATES = {
    "color": "What color is the {shape}?",
    "count": "How many shapes are there?",
    "exists": "Is there a {color} {shape}?",
    "position": "Is the {color} {shape} on the left or on the right?",
}
SPLITS = ("train", "validation", "test")
SPLIT_SEEDS = {"train": 16_000, "validation": 16_001, "test": 16_002}
SPLIT_BUCKETS = {"test": (0,), "validation": (1,), "train": tuple(range(2, 10))}
MAX_OBJECTS = 4
SIZE_RANGE = (0.12, 0.30)
BACKGROUND_LOW, BACKGROUND_HIGH = 215, 250
TEXTURE_AMPLITUDE = 8
DEFAULT_IMAGE_SIZE = 72


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels

    @property
    def pair(self) -> tuple[str, str]:
        return self.color, self.shape


@dataclass
class Scene:
    image_size: int
    background: tuple[int, int, int]
    textured: bool
    objects: list[ShapeObject]
    noise_seed: int

    def side_of(self, obj: ShapeObject) -> str | None:
        half = self.image_size / 2
        if obj.box[2] <= half:
            return "left"
        if obj.box[0] >= half:
            return "right"
        return None

    def color_askable(self) -> list[ShapeObject]:
        """The objects a color question can name: their shape occurs once."""
        shape_counts = Counter(obj.shape for obj in self.objects)
        return [obj for obj in self.objects if shape_counts[obj.shape] == 1]

    def side_askable(self) -> list[ShapeObject]:
        """The objects a position question can name: their pair occurs once and lies in one half."""
        pair_counts = Counter(obj.pair for obj in self.objects)
        return [obj for obj in self.objects if pair_counts[obj.pair] == 1 and self.side_of(obj) is not None]


@dataclass(frozen=True)
class Question:
    """One question about one image of a split."""

    split: str
    image_index: int
    question_type: str
    question: str
    answer: str

    @property
    def id(self) -> str:
        return f"{self.split}-{self.image_index:06d}-{self.question_type}"


@dataclass
class Example:
    """One image of a split with its questions."""

    split: str
    index: int
    image: Image.Image
    scene: Scene
    questions: list[Question] = field(default_factory=list)

    @property
    def image_name(self) -> str:
        return f"{self.split}-{self.index:06d}.png"


def _boxes_apart(a, b) -> bool:
    return a[2] + 1 <= b[0] or b[2] + 1 <= a[0] or a[3] + 1 <= b[1] or b[3] + 1 <= a[1]


def sample_scene(rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE) -> Scene:
    """A random scene as the module docstring defines it."""
    background = tuple(int(v) for v in rng.integers(BACKGROUND_LOW, BACKGROUND_HIGH + 1, 3))
    textured = bool(rng.random() < 0.5)
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    while True:  # rejection: redraw the whole layout until the boxes are apart
        objects = []
        for _ in range(count):
            side = round(float(rng.uniform(*SIZE_RANGE)) * image_size)
            x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, 2))
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
            objects.append(ShapeObject(shape, color, (x0, y0, x0 + side, y0 + side)))
        if all(_boxes_apart(a.box, b.box) for i, a in enumerate(objects) for b in objects[i + 1 :]):
            break
    return Scene(image_size, background, textured, objects, int(rng.integers(2**31)))


def render(scene: Scene) -> Image.Image:
    """The scene's RGB image."""
    size = scene.image_size
    pixels = np.empty((size, size, 3), dtype=np.int16)
    pixels[:] = scene.background
    if scene.textured:
        noise = np.random.default_rng(scene.noise_seed).integers(
            -TEXTURE_AMPLITUDE, TEXTURE_AMPLITUDE + 1, (size, size, 3)
        )
        pixels += noise.astype(np.int16)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    _draw_objects(ImageDraw.Draw(image), scene.objects, lambda number, obj: COLORS[obj.color])
    return image


def object_map(scene: Scene) -> np.ndarray:
    """[size, size] uint8: which object covers each pixel (its index in `scene.objects` + 1; 0 for the
    background), drawn exactly as `render` draws the objects."""
    canvas = Image.new("L", (scene.image_size, scene.image_size), 0)
    _draw_objects(ImageDraw.Draw(canvas), scene.objects, lambda number, obj: number + 1)
    return np.asarray(canvas)


def _draw_objects(draw: ImageDraw.ImageDraw, objects: list[ShapeObject], fill_of) -> None:
    for number, obj in enumerate(objects):
        x0, y0, x1, y1 = obj.box
        fill = fill_of(number, obj)
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


def image_bucket(image: Image.Image) -> int:
    """0..9 from the image's bytes: which split an image may belong to (see SPLIT_BUCKETS)."""
    return hashlib.sha256(image.tobytes()).digest()[0] % 10


def split_of_image(image: Image.Image) -> str:
    bucket = image_bucket(image)
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(type, question, answer) for the scene, as the module docstring defines them."""
    questions = []
    shape_counts = Counter(obj.shape for obj in scene.objects)
    pair_counts = Counter(obj.pair for obj in scene.objects)
    single_shapes = scene.color_askable()
    if single_shapes:
        obj = single_shapes[int(rng.integers(len(single_shapes)))]
        questions.append(("color", TEMPLATES["color"].format(shape=obj.shape), obj.color))
    questions.append(("count", TEMPLATES["count"], str(len(scene.objects))))

    present = sorted(pair_counts)
    if rng.random() < 0.5:
        color, shape = present[int(rng.integers(len(present)))]
        answer = "yes"
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in pair_counts]
        color, shape = draw_absent_pair(absent, shape_counts, rng)
        answer = "no"
    questions.append(("exists", TEMPLATES["exists"].format(color=color, shape=shape), answer))

    sided = scene.side_askable()
    if sided:
        obj = sided[int(rng.integers(len(sided)))]
        question = TEMPLATES["position"].format(color=obj.color, shape=obj.shape)
        questions.append(("position", question, scene.side_of(obj)))
    return questions


def draw_absent_pair(absent: list[tuple[str, str]], shape_counts: Counter, rng: np.random.Generator):
    """One of the `absent` (color, shape) pairs for a "no" presence question: half the time, when there is
    one, the hard kind (a shape that is in the image, in a color it does not have), else any, uniformly."""
    hard = [(color, shape) for color, shape in absent if shape in shape_counts]
    pool = hard if hard and rng.random() < 0.5 else absent
    return pool[int(rng.integers(len(pool)))]


def make_example(split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE) -> Example:
    """Image `index` of `split`, with its questions (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    attempt = 0
    while True:
        rng = np.random.default_rng([SPLIT_SEEDS[split], index, attempt])
        scene = sample_scene(rng, image_size)
        image = render(scene)
        if image_bucket(image) in SPLIT_BUCKETS[split]:
            break
        attempt += 1
    example = Example(split, index, image, scene)
    example.questions = [
        Question(split, index, kind, text, answer) for kind, text, answer in scene_questions(scene, rng)
    ]
    return example


def examples(split: str, count: int, start: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> list[Example]:
    return [make_example(split, index, image_size) for index in range(start, start + count)]


def question_corpus() -> list[str]:
    """Every question text and answer the task can produce (for training a tokenizer on)."""
    texts = [TEMPLATES["count"]]
    for shape in SHAPES:
        texts.append(TEMPLATES["color"].format(shape=shape))
        for color in COLORS:
            texts.append(TEMPLATES["exists"].format(color=color, shape=shape))
            texts.append(TEMPLATES["position"].format(color=color, shape=shape))
    return texts + [answer for answers in ANSWERS.values() for answer in answers]
