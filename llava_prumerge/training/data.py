"""LLaVA conversation data for `llava-prumerge train`: validation, vicuna_v1 prompts, loss masks, batches.

Each sample is rendered as LLaVA-1.5 trained it (vicuna_v1, whatever the processor's chat template):
"SYSTEM USER: <image>\\nquestion ASSISTANT: answer</s>USER: ... ASSISTANT: answer</s>". Only the
answers and their `</s>` carry labels; the tokens are matched to the answers by character offsets,
so the mask is exact for any fast tokenizer. Each image stays one `<image>` token: the model replaces
it with that image's reduced tokens. Images are padded to a square with the image processor's mean
color before processing, as LLaVA-1.5's "pad" aspect ratio does.

The whole file is validated up front (structure, image files, token counts), before any model is
loaded: bad samples are listed with their id and the problem, in the console and in a JSON report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..common.conversation import IMAGE_PLACEHOLDER, VICUNA_V1_SYSTEM, render_vicuna_v1
from ..common.images import check_image_size, open_image
from ..errors import BadSample, DataError, VisualInputError
from ..modeling.compaction import IGNORE_INDEX

ROLES = ("human", "gpt")
_TOKENIZE_CHUNK = 1024


@dataclass
class Conversation:
    """One sample rendered as a vicuna_v1 prompt, with the character spans that carry labels."""

    id: str
    index: int
    text: str
    answer_spans: list[tuple[int, int]]  # [start, end) of each answer and its </s>
    image_paths: list[Path]
    length: int = 0  # tokens the language model sees, images counted unreduced (set after tokenizing)


@dataclass
class DataReport:
    """What up-front validation found; written to OUTPUT_DIR/data_report.json."""

    data: str
    image_folder: str
    max_length: int
    samples: int = 0
    used: int = 0
    bad: list[dict] = field(default_factory=list)  # {index, id, problem}
    truncated: list[dict] = field(default_factory=list)  # {index, id, tokens}

    def summary(self) -> str:
        return (
            f"data: {self.samples} samples in {self.data}: {self.used} used, {len(self.bad)} bad, "
            f"{len(self.truncated)} truncated to --max-length {self.max_length}"
        )

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def read_records(data_path: Path) -> list[dict | BadSample]:
    """The samples of a JSON array or JSON Lines file; an unparsable JSON Lines line becomes a BadSample."""
    text = data_path.read_text(encoding="utf-8")
    start = text.lstrip()[:1]
    whole = _single_object(text) if start == "{" else None
    if whole is not None and (len(text.strip().splitlines()) > 1 or "conversations" not in whole):
        raise DataError(
            f"{data_path} holds one JSON object, not a list of samples; expected a JSON list of LLaVA "
            "conversation samples, or JSON Lines with one sample per line"
        )
    if start == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{data_path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                "expected a list of LLaVA conversation samples, or JSON Lines with one sample per line"
            ) from error
        return records
    if start == "{":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                records.append(
                    BadSample(f"line {number} is not valid JSON ({error.msg}, column {error.colno})")
                )
        return records
    raise DataError(
        f"{data_path} holds neither a JSON list (starting with '[') nor JSON Lines (one object per line); "
        "expected LLaVA conversation samples"
    )


def _single_object(text: str) -> dict | None:
    """The whole text as one JSON object, or None when it is not one (JSON Lines with several samples)."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return None
    return whole if isinstance(whole, dict) else None


def _has_usable_id(record) -> bool:
    identifier = record.get("id") if isinstance(record, dict) else None
    return isinstance(identifier, (str, int, float)) and not isinstance(identifier, bool)


def sample_id(record, index: int) -> str:
    return str(record["id"]) if _has_usable_id(record) else f"#{index}"


def json_type(value) -> str:
    """How JSON names the type of a parsed value, for messages."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def check_image_file(path: Path) -> None:
    """Refuse an image whose size is out of bounds or whose pixel data is cut short, cheaply: a PNG's
    chunk checksums, a JPEG's end marker (decoded at 1/8 scale only when the marker is missing), other
    formats decoded. Raises BadSample; training would otherwise stop at the sample mid-run."""
    if path.is_dir():
        raise BadSample(f"image {path} is a folder, not an image file")
    if not path.is_file():
        raise BadSample(f"image not found: {path}")
    try:
        with Image.open(path) as image:  # reads the header only
            check_image_size(*image.size, name=f"image {path}")
            if image.format == "PNG":
                image.verify()
                return
            if image.format == "JPEG" and _ends_with_jpeg_end_marker(path):
                return
            image.draft("RGB", (1, 1))  # only JPEG decodes smaller; the other formats decode whole
            image.load()
    except (OSError, SyntaxError) as error:
        raise BadSample(f"image {path} is not readable as an image ({error})") from error
    except VisualInputError as error:
        raise BadSample(str(error)) from error


def _ends_with_jpeg_end_marker(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-2, 2)
        return file.read(2) == b"\xff\xd9"


def sample_label(identifier: str, index: int) -> str:
    """How messages name a sample: its id and its position in the file."""
    return f"sample #{index}" if identifier == f"#{index}" else f"sample {identifier!r} (#{index})"


def build_conversation(record, index: int, image_folder: Path) -> Conversation:
    """Check one record's structure and images, and render its vicuna_v1 prompt; raises BadSample."""
    if isinstance(record, BadSample):
        raise record
    if not isinstance(record, dict):
        raise BadSample(f"is a JSON {json_type(record)}, not an object with 'id', 'image', 'conversations'")
    if "id" in record and not _has_usable_id(record):
        raise BadSample(f"'id' must be a string or a number, got a JSON {json_type(record['id'])}")
    if "video" in record:
        raise BadSample(
            f"has a 'video' ({record['video']!r}): train takes images only; remove the sample from the data"
        )
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadSample("has no 'conversations' list")
    image = record.get("image")
    if image is None:
        image_names = []
    elif isinstance(image, str):
        image_names = [image]
    elif isinstance(image, list) and all(isinstance(name, str) for name in image):
        image_names = image
    else:
        raise BadSample("'image' must be a file name or a list of file names")

    messages = [{"role": "system", "content": VICUNA_V1_SYSTEM}]
    placeholders = 0
    for number, turn in enumerate(turns):
        role = ROLES[number % 2]
        if not isinstance(turn, dict) or turn.get("from") != role:
            found = f"'from' {turn.get('from')!r}" if isinstance(turn, dict) else f"a JSON {json_type(turn)}"
            raise BadSample(
                f"turn {number} must be {{'from': {role!r}, 'value': str}} (turns alternate human, gpt), "
                f"got {found}"
            )
        if not isinstance(turn.get("value"), str):
            raise BadSample(
                f"turn {number}'s 'value' must be a string, got a JSON {json_type(turn.get('value'))}"
            )
        value = turn["value"]
        count = value.count(IMAGE_PLACEHOLDER)
        if role == "gpt":
            if count:
                raise BadSample(f"turn {number} (an answer) holds {IMAGE_PLACEHOLDER}")
            messages.append({"role": "assistant", "content": value})
        else:
            placeholders += count
            # As LLaVA's preprocess_multimodal: the image(s) first, then the question.
            text = value.replace(IMAGE_PLACEHOLDER, "").strip()
            content = [{"type": "image"}] * count + [{"type": "text", "text": text}]
            messages.append({"role": "user", "content": content})
    if len(turns) % 2:
        raise BadSample("ends with a human turn: the last turn must be the gpt answer")
    if placeholders != len(image_names):
        raise BadSample(
            f"has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in its human turns but {len(image_names)} "
            "image(s) in 'image'; each image needs one placeholder"
        )
    if any(not name.strip() for name in image_names):
        raise BadSample("has an empty file name in 'image'")
    image_paths = [image_folder / name for name in image_names]
    for path in image_paths:
        check_image_file(path)
    rendered = render_vicuna_v1(messages)
    return Conversation(sample_id(record, index), index, rendered.text, rendered.answer_spans, image_paths)


def encode_conversations(tokenizer, conversations: list[Conversation]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and labels (IGNORE_INDEX outside the answer spans) of each conversation."""
    encoded = tokenizer(
        [conversation.text for conversation in conversations],
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,
    )
    results = []
    for conversation, ids, offsets in zip(
        conversations, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        ids = np.asarray(ids, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        in_answer = np.zeros(len(ids), dtype=bool)
        for start, end in conversation.answer_spans:
            in_answer |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
        results.append((ids, np.where(in_answer, ids, IGNORE_INDEX)))
    return results


@dataclass(frozen=True)
class LengthBudget:
    """`--max-length` in tokens the language model sees, each image counted at its unreduced size.

    The reducer keeps fewer tokens per image, so the language model never sees more than max_length.
    """

    max_length: int
    image_token_id: int
    tokens_per_image: int

    def llm_length(self, ids: np.ndarray) -> int:
        return len(ids) + int((ids == self.image_token_id).sum()) * (self.tokens_per_image - 1)

    def fit(self, ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut text after the last image so the sample fits; raises BadSample when that cannot work."""
        length = self.llm_length(ids)
        if length <= self.max_length:
            return ids, labels
        keep = len(ids) - (length - self.max_length)
        images = np.flatnonzero(ids == self.image_token_id)
        if images.size and images[-1] >= keep:
            raise BadSample(
                f"is {length} tokens long (images counted at {self.tokens_per_image}) and its image at "
                f"token {images[-1]} lies past --max-length {self.max_length}; raise --max-length"
            )
        if not (labels[:keep] != IGNORE_INDEX).any():
            raise BadSample(
                f"is {length} tokens long and no answer token lies within --max-length {self.max_length}"
            )
        return ids[:keep], labels[:keep]


def prepare_conversations(
    data_path: Path, image_folder: Path, tokenizer, budget: LengthBudget
) -> tuple[list[Conversation], DataReport]:
    """Validate and tokenize the whole file once: the usable conversations and what was wrong with the rest."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"{type(tokenizer).__name__} is a slow tokenizer; the loss mask needs character offsets, "
            "which only fast tokenizers give: save the processor with a fast tokenizer (tokenizer.json)"
        )
    if not image_folder.is_dir():
        raise DataError(f"--image-folder {image_folder} is not a folder")
    records = read_records(data_path)
    report = DataReport(str(data_path), str(image_folder), budget.max_length, samples=len(records))
    candidates = []
    for index, record in enumerate(records):
        try:
            candidates.append(build_conversation(record, index, image_folder))
        except BadSample as problem:
            report.bad.append({"index": index, "id": sample_id(record, index), "problem": str(problem)})
    conversations = []
    for chunk_start in range(0, len(candidates), _TOKENIZE_CHUNK):
        chunk = candidates[chunk_start : chunk_start + _TOKENIZE_CHUNK]
        for conversation, (ids, labels) in zip(chunk, encode_conversations(tokenizer, chunk), strict=True):
            entry = {"index": conversation.index, "id": conversation.id}
            try:
                kept, _ = budget.fit(ids, labels)
            except BadSample as problem:
                report.bad.append({**entry, "problem": str(problem)})
                continue
            conversation.length = budget.llm_length(kept)
            if len(kept) < len(ids):
                report.truncated.append({**entry, "tokens": budget.llm_length(ids)})
            conversations.append(conversation)
    report.bad.sort(key=lambda entry: entry["index"])
    report.used = len(conversations)
    return conversations, report


def describe_problems(report: DataReport, limit: int = 5) -> str:
    """The first few bad samples, one a line, for console messages."""
    lines = [
        f"{sample_label(entry['id'], entry['index'])}: {entry['problem']}" for entry in report.bad[:limit]
    ]
    if len(report.bad) > limit:
        lines.append(f"... and {len(report.bad) - limit} more")
    return "\n".join("  " + line for line in lines)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's expand2square: center the image on a square of the mean color."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class ConversationDataset(torch.utils.data.Dataset):
    """Validated conversations, tokenized and with their images loaded when a batch needs them."""

    def __init__(self, conversations: list[Conversation], tokenizer, image_processor, budget: LengthBudget):
        self.conversations = conversations
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.budget = budget
        self.fill = tuple(int(mean * 255) for mean in image_processor.image_mean)

    @property
    def lengths(self) -> list[int]:
        """Per sample, the tokens the language model sees (images unreduced), for grouping by length."""
        return [conversation.length for conversation in self.conversations]

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict:
        conversation = self.conversations[index]
        [(ids, labels)] = encode_conversations(self.tokenizer, [conversation])
        ids, labels = self.budget.fit(ids, labels)
        item = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}
        if conversation.image_paths:
            images = []
            for path in conversation.image_paths:
                try:
                    images.append(pad_to_square(open_image(path), self.fill))
                except (OSError, VisualInputError) as error:
                    raise DataError(
                        f"{sample_label(conversation.id, conversation.index)}: cannot decode image {path} "
                        f"({error}); replace the file or remove the sample from the data"
                    ) from error
            item["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return item


@dataclass
class ConversationCollator:
    """Right-pads a batch (labels with IGNORE_INDEX) and stacks all its images in prompt order."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        length = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            size = len(item["input_ids"])
            input_ids[row, :size] = item["input_ids"]
            labels[row, :size] = item["labels"]
            attention_mask[row, :size] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixel_values = [item["pixel_values"] for item in items if "pixel_values" in item]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
        return batch
