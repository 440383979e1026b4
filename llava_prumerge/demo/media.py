"""Images and videos from disk for `demo` and `visualize`: PIL for images, frame folders and animated
GIFs; PyAV for MP4 and other containers, when it is installed (nothing else decodes them here).

A video is sampled as Video-LLaVA samples it: a fixed number of frames, evenly spaced from the first
to the last (frames repeat when the video has fewer). Every bad input ends in one `PruMergeError`
that names the file and says what to pass instead.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..common.images import check_image_size, to_rgb
from ..errors import MissingInputError, PruMergeError, UsageError

VIDEO_FRAMES = 8  # as Video-LLaVA samples a video
CONTAINER_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")  # decoded with PyAV
VIDEO_KINDS = "a folder of frames, an animated GIF or an MP4"


@dataclass
class SampledVideo:
    """The frames a video contributes, and where they come from."""

    frames: list[Image.Image]  # RGB
    frame_numbers: list[int]  # each frame's index in the source
    total_frames: int  # frames in the source


# ---------------------------------------------------------------- which frames (pure)


def uniform_frame_indices(total: int, count: int = VIDEO_FRAMES) -> list[int]:
    """`count` frame indices evenly spaced from the first frame to the last, as Video-LLaVA's loaders
    pick them (`np.linspace(0, total - 1, count, dtype=int)`); a shorter video repeats frames."""
    return np.linspace(0, total - 1, count, dtype=int).tolist()


def natural_order(name: str) -> list:
    """A sort key that puts frame_2.png before frame_10.png (numbers compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def image_suffixes() -> set[str]:
    """The file suffixes PIL opens (PNG, JPEG, WebP, ...)."""
    return set(Image.registered_extensions())


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder in frame order (hidden files and other files left out)."""
    suffixes = image_suffixes()
    files = [
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes
    ]
    return sorted(files, key=lambda path: natural_order(path.name))


# ---------------------------------------------------------------- reading


def load_image(path: str | Path) -> Image.Image:
    """One still image as RGB; a video (folder, animated file, MP4) is refused with a pointer to --video."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image; pass a folder of video frames as --video {path}")
    if path.suffix.lower() in CONTAINER_SUFFIXES:
        raise UsageError(f"{path} is a video, not an image; pass it as --video {path}")
    with _pil_file(path, "an image (PNG, JPEG, ...)") as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise UsageError(f"{path} is a video ({frames} frames), not an image; pass it as --video {path}")
        check_image_size(*image.size, name=str(path))
        return to_rgb(image)


def load_video(path: str | Path, count: int = VIDEO_FRAMES) -> SampledVideo:
    """`count` evenly spaced frames of a frame folder, an animated GIF (or PNG, WebP) or an MP4."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"No video at {path}; pass {VIDEO_KINDS}")
    if path.is_dir():
        return _folder_frames(path, count)
    if path.suffix.lower() in CONTAINER_SUFFIXES:
        return _container_frames(path, count)
    return _animated_frames(path, count)


def _still_image_error(path: Path) -> UsageError:
    return UsageError(
        f"{path} is a still image (one frame), not a video; pass it as an image (demo --image, "
        f"visualize IMAGE), or pass {VIDEO_KINDS} as --video"
    )


@contextmanager
def _pil_file(path: Path, expected: str) -> Iterator[Image.Image]:
    """The image at `path`, open while the block reads it; a missing, unknown, truncated or damaged file is
    one error that names it (PIL's own say "image file is truncated", without the file)."""
    try:
        image = Image.open(path)
    except FileNotFoundError as error:
        raise MissingInputError(f"No file at {path}; pass {expected}") from error
    except UnidentifiedImageError as error:
        raise UsageError(f"Cannot read {path}: PIL does not recognize it as {expected}") from error
    with image:
        try:
            yield image
        except PruMergeError:
            raise
        # PIL decodes lazily, so the damage shows here, as whichever of these its decoder hits first
        except (OSError, EOFError, SyntaxError, IndexError, ValueError, struct.error) as error:
            raise UsageError(
                f"Cannot read {path}: it looks truncated or damaged ({error}); re-save it, or pass {expected}"
            ) from error


def _folder_frames(folder: Path, count: int) -> SampledVideo:
    files = frame_files(folder)
    if not files:
        raise MissingInputError(
            f"No frames in {folder}: it holds no image files (PNG, JPEG, ...); pass {VIDEO_KINDS}"
        )
    if len(files) == 1:
        raise UsageError(
            f"{folder} holds one frame ({files[0].name}): a still image, not a video; pass it as an image, "
            "or add the other frames"
        )
    indices = uniform_frame_indices(len(files), count)
    frames = []
    for index in indices:
        with _pil_file(files[index], f"an image (frame {index + 1} of {folder})") as frame:
            frames.append(frame.convert("RGB"))
    return SampledVideo(frames, indices, len(files))


def _animated_frames(path: Path, count: int) -> SampledVideo:
    with _pil_file(path, VIDEO_KINDS) as animation:
        total = getattr(animation, "n_frames", 1)
        if total == 1:
            raise _still_image_error(path)
        indices = uniform_frame_indices(total, count)
        frames = []
        for index in indices:
            animation.seek(index)
            frames.append(animation.convert("RGB"))
    return SampledVideo(frames, indices, total)


def _container_frames(path: Path, count: int) -> SampledVideo:
    """Frames of an MP4 (or another container FFmpeg reads) through PyAV, decoding up to the last one needed."""
    try:
        import av
    except ImportError:
        raise UsageError(
            f"Reading {path.name} needs PyAV, which is not installed: `pip install av`, or pass a folder "
            "of frames or an animated GIF"
        ) from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UsageError(f"{path} holds no video stream; pass {VIDEO_KINDS}")
            stream = container.streams.video[0]
            total = stream.frames or sum(packet.size > 0 for packet in container.demux(stream))
            if total < 2:
                raise _still_image_error(path)
            indices = uniform_frame_indices(total, count)
            container.seek(0)
            decoded = {}
            for number, frame in enumerate(container.decode(stream)):
                if number in indices:
                    decoded[number] = frame.to_image().convert("RGB")
                if number >= indices[-1]:
                    break
    except av.error.FFmpegError as error:
        raise UsageError(f"Cannot read {path} as a video (PyAV: {error}); pass {VIDEO_KINDS}") from error
    if len(decoded) < len(set(indices)):
        raise UsageError(f"{path} declares {total} frames but fewer decode; re-encode it or pass its frames")
    return SampledVideo([decoded[index] for index in indices], indices, total)
