"""Shapes-VQA as files: LLaVA conversation data for `llava-prumerge train`, or a local lmms-eval task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..common.outputs import check_output_path
from ..errors import OutputExistsError
from .shapes_vqa import DEFAULT_IMAGE_SIZE, examples

LMMS_TASK_NAME = "shapes_vqa_local"
# The task definition lmms-eval reads (see its docs: a local dataset, functions from utils.py beside it).
LMMS_TASK_YAML = f"""\
# Shapes-VQA (llava-prumerge's synthetic task) as a local lmms-eval task: one question per line of
# test.jsonl, images in images/. Written by `llava-prumerge shapes-vqa --format lmms-eval`.
task: {LMMS_TASK_NAME}
dataset_path: json
dataset_kwargs:
  data_files:
    test: test.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
LMMS_TASK_UTILS = '''\
"""Functions of the local Shapes-VQA task (written by `llava-prumerge shapes-vqa --format lmms-eval`)."""

import re
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}


def doc_to_visual(doc):
    with Image.open(HERE / "images" / doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def normalize(text):
    """As llava_prumerge.evaluation.scoring.normalize_answer: the first word, lowercased."""
    match = re.search(r"[a-z0-9]+", text.lower())
    word = match.group(0) if match else ""
    return NUMBER_WORDS.get(word, word)


def process_results(doc, results):
    return {"exact_match": float(normalize(results[0]) == doc["answer"])}
'''


def _prepare(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} already exists and is not empty; choose another --out or pass --overwrite"
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


def write_llava_split(
    out: Path, split: str, count: int, start: int = 0, image_size: int = DEFAULT_IMAGE_SIZE
) -> Path:
    """OUT/images/*.png and OUT/data.json: each image with all its questions as conversation turns."""
    records = []
    for example in examples(split, count, start, image_size):
        example.image.save(out / "images" / example.image_name)
        turns = []
        for number, question in enumerate(example.questions):
            text = f"<image>\n{question.question}" if number == 0 else question.question
            turns += [{"from": "human", "value": text}, {"from": "gpt", "value": question.answer}]
        records.append(
            {"id": f"{split}-{example.index:06d}", "image": example.image_name, "conversations": turns}
        )
    path = out / "data.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


def write_lmms_task(
    out: Path, split: str, count: int, start: int = 0, image_size: int = DEFAULT_IMAGE_SIZE
) -> Path:
    """A local lmms-eval task folder: the YAML, utils.py, images/ and test.jsonl (one question a line)."""
    lines = []
    for example in examples(split, count, start, image_size):
        example.image.save(out / "images" / example.image_name)
        for question in example.questions:
            lines.append(
                json.dumps(
                    {
                        "id": question.id,
                        "image": example.image_name,
                        "question": question.question,
                        "answer": question.answer,
                        "question_type": question.question_type,
                    }
                )
            )
    (out / "test.jsonl").write_text("\n".join(lines) + "\n")
    (out / "utils.py").write_text(LMMS_TASK_UTILS)
    path = out / f"{LMMS_TASK_NAME}.yaml"
    path.write_text(LMMS_TASK_YAML)
    return path


def write_split(args: argparse.Namespace) -> Path:
    check_output_path(args.out, "--out", folder=True)
    out = _prepare(args.out, args.overwrite)
    size = args.image_size or DEFAULT_IMAGE_SIZE
    writer = write_llava_split if args.format == "llava" else write_lmms_task
    path = writer(out, args.split, args.images, args.start, size)
    print(f"Wrote {args.images} {args.split} images of Shapes-VQA ({size} px) and {path}")
    return path
