"""Shapes-VQA: deterministic splits that never share an image, and answers right by construction."""

from collections import Counter

import numpy as np
import pytest

from llava_prumerge.evaluation.shapes_vqa import (
    ANSWERS,
    COLORS,
    MAX_OBJECTS,
    QUESTION_TYPES,
    SHAPES,
    SIZE_RANGE,
    SPLIT_BUCKETS,
    TEMPLATES,
    examples,
    image_bucket,
    make_example,
    object_map,
    question_corpus,
    split_of_image,
)

SIZE = 72


@pytest.fixture(scope="module")
def splits():
    return {split: examples(split, 60, image_size=SIZE) for split in ("train", "validation", "test")}


def test_the_same_seed_gives_the_same_image_and_questions():
    first, again = make_example("test", 7, SIZE), make_example("test", 7, SIZE)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.questions == again.questions
    assert make_example("test", 8, SIZE).image.tobytes() != first.image.tobytes()


def test_splits_are_disjoint_by_construction(splits):
    hashes = {split: {e.image.tobytes() for e in items} for split, items in splits.items()}
    assert not hashes["train"] & hashes["test"]
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["validation"] & hashes["test"]
    for split, items in splits.items():
        assert {split_of_image(e.image) for e in items} == {split}
        assert all(image_bucket(e.image) in SPLIT_BUCKETS[split] for e in items)


def test_images_follow_the_definition(splits):
    for example in splits["test"]:
        assert example.image.size == (SIZE, SIZE) and example.image.mode == "RGB"
        objects = example.scene.objects
        assert 1 <= len(objects) <= MAX_OBJECTS
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            assert x1 - x0 == y1 - y0
            assert round(SIZE_RANGE[0] * SIZE) <= x1 - x0 <= round(SIZE_RANGE[1] * SIZE)
            assert min(x0, y0) >= 0 and max(x1, y1) <= SIZE
            assert obj.shape in SHAPES and obj.color in COLORS
            # the object's own color is at its center (every shape covers the center of its box)
            center = example.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2 + 1))
            assert center == COLORS[obj.color]
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                apart = (
                    a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]
                )
                assert apart


def assert_right_answer(objects, question_type: str, question: str, answer: str) -> None:
    """The answer that the scene's objects give to the question, by the task's definition."""
    shapes = Counter(obj.shape for obj in objects)
    pairs = Counter((obj.color, obj.shape) for obj in objects)
    assert answer in ANSWERS[question_type]
    assert answer == answer.lower() and " " not in answer
    words = question.rstrip("?").split()
    if question_type == "color":
        shape = words[-1]
        assert shapes[shape] == 1
        assert answer == next(obj.color for obj in objects if obj.shape == shape)
    elif question_type == "count":
        assert question == TEMPLATES["count"] and answer == str(len(objects))
    elif question_type == "exists":
        color, shape = words[-2], words[-1]
        assert answer == ("yes" if pairs[color, shape] else "no")
    else:
        color, shape = words[2], words[3]
        assert pairs[color, shape] == 1
        obj = next(obj for obj in objects if (obj.color, obj.shape) == (color, shape))
        half = SIZE / 2
        assert (obj.box[2] <= half and answer == "left") or (obj.box[0] >= half and answer == "right")


def test_answers_are_right_by_construction(splits):
    for example in [*splits["test"], *splits["train"]]:
        for question in example.questions:
            assert_right_answer(
                example.scene.objects, question.question_type, question.question, question.answer
            )
        kinds = [question.question_type for question in example.questions]
        assert kinds == sorted(kinds, key=QUESTION_TYPES.index) and "count" in kinds and "exists" in kinds


def test_train_mini_asks_every_question_that_applies_rightly_and_balanced(splits):
    """train-mini's questions: eval's four types, right by construction, every applicable color and side,
    as many "no" as "yes" presence questions, and a superset of eval's kinds of question per image."""
    from llava_prumerge.mini.train import EXISTS_PER_ANSWER, training_questions

    first_word = {template.split()[0] + template.split()[1]: kind for kind, template in TEMPLATES.items()}
    rng = np.random.default_rng(0)
    for example in splits["train"]:
        objects = example.scene.objects
        asked = Counter()
        for question, answer in training_questions(example.scene, rng):
            kind = first_word["".join(question.split()[:2])]
            assert_right_answer(objects, kind, question, answer)
            asked[kind, answer if kind == "exists" else None] += 1
        shapes = Counter(obj.shape for obj in objects)
        assert asked["color", None] == sum(shapes[obj.shape] == 1 for obj in objects)
        assert asked["count", None] == 1
        yes = min(len({obj.pair for obj in objects}), EXISTS_PER_ANSWER)
        assert asked["exists", "yes"] == asked["exists", "no"] == yes
        pairs = Counter(obj.pair for obj in objects)
        sided = [obj for obj in objects if pairs[obj.pair] == 1 and example.scene.side_of(obj)]
        assert asked["position", None] == len(sided)
        assert {q.question_type for q in example.questions} <= {kind for kind, _ in asked}


def test_train_mini_first_phase_asks_the_color_of_each_shape_that_occurs_once(splits):
    """Stage 2's binding phase: only color questions, right by construction, one conversation per image
    that has one, showing that image; the task phase after it covers every image."""
    from llava_prumerge.mini.model import build_tokenizer
    from llava_prumerge.mini.train import MiniRecipe, language_phases
    from llava_prumerge.modeling.compaction import IGNORE_INDEX
    from llava_prumerge.testing.tiny import llava_fast_tokenizer

    pool = splits["train"]
    tokenizer = llava_fast_tokenizer(build_tokenizer())
    binding, task = language_phases(pool, tokenizer, MiniRecipe(binding_steps=5, llm_steps=7))
    assert (binding.name, binding.steps, task.name, task.steps) == ("binding", 5, "language", 7)
    askable = [row for row, example in enumerate(pool) if example.scene.color_askable()]
    assert 0 < len(askable) < len(pool) and binding.images.tolist() == askable
    assert task.images.tolist() == list(range(len(pool)))
    for (ids, labels), row in zip(binding.encoded, binding.images, strict=True):
        text = tokenizer.decode(ids)
        questions = [part.split("?")[0] + "?" for part in text.split("USER: ")[1:]]
        answers = tokenizer.decode(ids[labels != IGNORE_INDEX]).replace("</s>", " ").split()
        objects = pool[row].scene.objects
        assert len(questions) == len(answers) == len(pool[row].scene.color_askable())
        for question, answer in zip(questions, answers, strict=True):
            assert question.startswith("<image>\n") == (question is questions[0])
            assert_right_answer(objects, "color", question.removeprefix("<image>\n"), answer)
    [only_task] = language_phases(pool, tokenizer, MiniRecipe(binding_steps=0))
    assert only_task.name == "language"


def test_each_training_answer_is_grounded_in_the_object_its_question_names(splits):
    """`named_pair`: a color question's object is the one with the named shape, a presence question
    answered "yes" and a side question name their pair; a count and an absent pair name none."""
    from llava_prumerge.mini.train import named_pair, training_questions

    rng = np.random.default_rng(0)
    for example in splits["train"]:
        scene = example.scene
        for question, answer in training_questions(scene, rng):
            pair = named_pair(scene, question, answer)
            if question.startswith("What color"):
                [named] = [obj.pair for obj in scene.objects if question.endswith(f" {obj.shape}?")]
                assert pair == named and pair[0] == answer
            elif question.startswith("Is the "):
                assert pair is not None and question.startswith(f"Is the {pair[0]} {pair[1]} ")
            elif question.startswith("Is there") and answer == "yes":
                assert question == f"Is there a {pair[0]} {pair[1]}?" and pair in [
                    obj.pair for obj in scene.objects
                ]
            else:
                assert pair is None


def test_each_grounded_answer_is_predicted_by_the_token_before_it(splits):
    """`answer_grounding` rows: the <image> token, the token after which the answer starts, and the patch
    label of the pair its question names, for every answer that names one, in order."""
    from llava_prumerge.common.conversation import IMAGE_PLACEHOLDER
    from llava_prumerge.mini.model import build_tokenizer
    from llava_prumerge.mini.train import PAIRS, MiniRecipe, language_phases, named_pair
    from llava_prumerge.modeling.compaction import IGNORE_INDEX
    from llava_prumerge.testing.tiny import llava_fast_tokenizer

    pool = splits["train"][:40]
    tokenizer = llava_fast_tokenizer(build_tokenizer())
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    grounded = 0
    for phase in language_phases(pool, tokenizer, MiniRecipe()):
        for (ids, labels), rows, image in zip(phase.encoded, phase.grounding, phase.images, strict=True):
            turns = tokenizer.decode(ids).split("USER: ")[1:]
            expected = []
            for turn in turns:
                question, answer = turn.removeprefix("<image>\n").split(" ASSISTANT: ")
                pair = named_pair(pool[image].scene, question, answer.removesuffix("</s>").strip())
                expected.append(None if pair is None else 1 + PAIRS.index(pair))
            starts = [
                p
                for p in range(1, len(labels))
                if labels[p] != IGNORE_INDEX and labels[p - 1] == IGNORE_INDEX
            ]
            expected_rows = [
                [start - 1, label] for start, label in zip(starts, expected, strict=True) if label
            ]
            assert rows[:, 1:].tolist() == expected_rows
            assert (ids[rows[:, 0]] == image_token_id).all()
            grounded += len(rows)
    assert grounded > 100


def test_presence_questions_are_balanced_with_hard_negatives():
    questions = [q for e in examples("validation", 300, image_size=SIZE) for q in e.questions]
    exists = [q for q in questions if q.question_type == "exists"]
    yes = sum(q.answer == "yes" for q in exists) / len(exists)
    assert 0.4 < yes < 0.6
    counts = Counter(q.answer for q in questions if q.question_type == "count")
    assert set(counts) == {"1", "2", "3", "4"} and min(counts.values()) > 40


def test_hard_negatives_ask_for_a_present_shape_in_an_absent_color():
    hard = 0
    for example in examples("validation", 200, image_size=SIZE):
        shapes = {obj.shape for obj in example.scene.objects}
        for q in example.questions:
            if (
                q.question_type == "exists"
                and q.answer == "no"
                and q.question.rstrip("?").split()[-1] in shapes
            ):
                hard += 1
    assert hard > 20


def test_corpus_covers_every_question_and_answer():
    corpus = set(question_corpus())
    questions = [q for e in examples("test", 30, image_size=SIZE) for q in e.questions]
    assert all(q.question in corpus and q.answer in corpus for q in questions)


def test_other_image_sizes_scale_the_objects():
    example = make_example("test", 0, 224)
    assert example.image.size == (224, 224)
    sides = [obj.box[2] - obj.box[0] for obj in example.scene.objects]
    assert all(round(0.12 * 224) <= side <= round(0.3 * 224) for side in sides)
    assert np.asarray(example.image).min() < 100  # objects drawn


def test_the_object_map_covers_exactly_the_drawn_pixels(splits):
    for example in splits["validation"][:20]:
        covered = object_map(example.scene)
        pixels = np.asarray(example.image)
        assert covered.max() == len(example.scene.objects)
        for number, obj in enumerate(example.scene.objects, 1):
            assert (pixels[covered == number] == COLORS[obj.color]).all()


def test_the_smallest_image_size_the_command_takes_works(tmp_path, capsys):
    """Below it the smallest objects are 0 pixels wide (a ValueError from PIL, and images/ left behind)."""
    from llava_prumerge.cli import main
    from llava_prumerge.evaluation.cli import MIN_IMAGE_SIZE

    assert all(make_example("train", index, MIN_IMAGE_SIZE).questions for index in range(200))
    with pytest.raises(ValueError, match="x1 must be greater"):
        [make_example("train", index, MIN_IMAGE_SIZE - 1) for index in range(200)]
    with pytest.raises(SystemExit) as exit_info:
        main(["shapes-vqa", "--out", str(tmp_path / "out"), "--image-size", str(MIN_IMAGE_SIZE - 1)])
    assert exit_info.value.code == 2
    assert f"--image-size: must be an integer >= {MIN_IMAGE_SIZE}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
