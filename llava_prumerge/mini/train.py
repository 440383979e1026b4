"""`llava-prumerge train-mini`: train the mini LLaVA on Shapes-VQA from scratch, in two seeded stages, on a CPU.

Stage 1, the vision tower alone (LLaVA's CLIP was pretrained; this one is trained here): a
`CLIPVisionModel` reads each image. A linear head on its pooled [CLS] output predicts, for each of the
15 (color, shape) pairs, whether it is in the image, in its left half and in its right half (by object
center; binary cross-entropy), and the number of objects (cross-entropy): this [CLS] objective is
what teaches the last layer's [CLS] attention, which PruMerge reads, where the objects are (the last
layer serves nothing else). Auxiliary heads on the patch rows of the layer -2 hidden state, the
features the language model reads, predict each patch's object (a (color, shape) pair or background),
whether the patch is in the left half, and, from every patch row, the object count and the [CLS]
head's 45 pair bits: dense labels that a 4-layer language model trained for minutes can read, where
CLIP's features came from 400 M images. The per-patch scene labels make every patch carry a summary
of the whole image, as patch tokens of real ViTs carry global information.

With --tower siglip (MiniRecipe.tower; the package ships both: weights/ the "clip" one, weights-siglip/
the "siglip" one) the tower is a `SiglipVisionModel` of the same size, which has no [CLS] token: the
image-level heads read its pooled output, that of its attention-pooling head (`head`: a learned probe
attending over the last layer's output), and the patch heads read every row of the layer -2 hidden
state, each a patch. No [CLS] attention is taught, for there is no [CLS] row: PruMerge scores the
patches with a stand-in (`ReductionSettings.importance` "auto" picks `STAND_IN_IMPORTANCE` there), and
the variant exists to prove the stand-ins on a tower trained here (the README has what it measured). LLaVA reads
the SigLIP tower with the "full" strategy: the language model sees 144 visual tokens with either tower,
visual token k being patch k, which stage 2's grounding loss relies on.

Stage 2, LLaVA's instruction tuning: the tower frozen (as LLaVA-1.5's CLIP), the projector and a
Llama language model, both from scratch (drawn at std 0.1, not transformers' 0.02:
`initialize_language_side`), trained on Shapes-VQA conversations (one image and its questions as
turns in a seeded random order; the vicuna_v1 system prompt on half of them), loss on the answers
only, every visual token given to the language model (token_reduction="none", as LLaVA-1.5 trained),
in two phases: first the color questions alone (`binding_questions`), then, by default, every
question of the task's four types that applies (`training_questions`). Trained on the mixture from
the start, the language model found objects by their color and ignored the shape a question names;
the color questions alone make it bind the two, and the second phase keeps that (the README has the
runs). In both phases a grounding loss (`grounding_loss`, weighted by MiniRecipe.grounding_weight)
teaches the first head of the language model's layer 1 to look the named object up: at the token that
predicts each answer about one object (a color, a present pair, a side: `named_pair`), that head's
attention should fall on the object's patches (stage 1's patch labels). Without it the language model
spread its attention over every object alike and answered a side question with the side of all of
them (sides stalled near 80%). It is supervision that only a synthetic task's ground truth gives; the
trained model is a plain LLaVA and nothing at inference knows of it. The stage-1 heads are dropped.

Both stages draw batches from a fixed pool of training images (generated once; the test split's
images are never among them: see the split buckets in `shapes_vqa`), AdamW, linear warm-up then
cosine decay, torch's RNG seeded with --seed. With --processes N (data parallel, torch.distributed's
gloo backend on this machine) every process draws the same batches and takes its 1/N share of each;
their gradients are averaged, so the replicas take identical steps: the step of the whole batch, up to
float rounding (the language loss is a mean over answer tokens, now per share). On the same torch
build, thread count and number of processes a run is repeatable; another seed, process count, machine
or build follows another trajectory (under an earlier recipe seed 1 scored 59.0% on the test split
against seed 0's 71.1%: the README).
"""

from __future__ import annotations

import datetime
import json
import math
import tempfile
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..common.conversation import IMAGE_PLACEHOLDER, VICUNA_V1_SYSTEM, render_vicuna_v1
from ..errors import UsageError
from ..evaluation.shapes_vqa import (
    COLORS,
    MAX_OBJECTS,
    SHAPES,
    TEMPLATES,
    Example,
    Scene,
    draw_absent_pair,
    examples,
    object_map,
)
from ..modeling.compaction import IGNORE_INDEX
from ..modeling.vision_encoding import has_class_token
from ..testing.tiny import llava_fast_tokenizer
from ..training.data import Conversation, ConversationCollator, encode_conversations
from .model import (
    IMAGE_SIZE,
    MODEL_CARD_TAGS,
    TEXT_CONFIG,
    TOWERS,
    TRAINING_RECORD,
    build_tokenizer,
    mini_processor,
    new_mini_model,
    save_mini_weights,
)

PAIRS = [(color, shape) for color in COLORS for shape in SHAPES]


@dataclass
class MiniRecipe:
    """Everything that decides the trained weights (written to training.json beside them)."""

    seed: int = 0
    tower: str = "clip"  # "clip" (the shipped weights) or "siglip" (no [CLS] token: the module docstring)
    train_images: int = 12_000
    vision_steps: int = 10_000
    vision_batch_size: int = 32
    vision_lr: float = 3e-3
    questions: str = "all"  # "all": every question that applies (training_questions); "task": eval's
    binding_steps: int = 600  # stage 2 first trains on the color questions alone (binding_questions)
    llm_steps: int = 800
    grounding_weight: float = 1.0  # of the grounding loss in stage 2 (0: none); see grounding_loss
    grounding_layer: int = 1  # the language-model layer whose first head the grounding loss teaches
    llm_batch_size: int = 16
    llm_lr: float = 1.5e-3
    language_init_std: float = 0.1  # see initialize_language_side
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    system_prompt_fraction: float = 0.5
    processes: int = 2  # data parallel: each process takes its share of a batch (1: another trajectory)
    threads: int = 1  # per process; on the shared 2-core CPU two threads in one process were 4-10x slower
    check_every: int = 200
    test_questions: int | None = None  # None: all of eval's default test split
    log_every: int = 25
    check_images: int = 100

    def __post_init__(self):
        if self.llm_steps < 1 or self.binding_steps < 0:
            raise UsageError(
                f"MiniRecipe has llm_steps={self.llm_steps} and binding_steps={self.binding_steps}; the last "
                "phase needs at least 1 step, and the color phase 0 (skipped) or more"
            )
        if self.grounding_weight < 0:
            raise UsageError(f"MiniRecipe.grounding_weight is {self.grounding_weight}; use 0 (none) or more")
        if not 0 <= self.grounding_layer < TEXT_CONFIG["num_hidden_layers"]:
            raise UsageError(
                f"MiniRecipe.grounding_layer is {self.grounding_layer}; the language model's layers are 0 to "
                f"{TEXT_CONFIG['num_hidden_layers'] - 1}"
            )
        if self.tower not in TOWERS:
            raise UsageError(
                f"MiniRecipe.tower is {self.tower!r}; use one of {', '.join(map(repr, TOWERS))} (--tower)"
            )
        if self.questions not in ("all", "task"):
            raise UsageError(f"MiniRecipe.questions is {self.questions!r}; use 'all' or 'task'")
        for batch_size in (self.vision_batch_size, self.llm_batch_size):
            if batch_size % self.processes:
                raise UsageError(
                    f"{self.processes} processes (--processes) cannot share a batch of {batch_size} evenly; "
                    f"use a number of processes that divides {self.vision_batch_size} and {self.llm_batch_size}"
                )

    @classmethod
    def quick(cls) -> MiniRecipe:
        """A few steps of each stage: proves the script runs (CI), trains nothing useful."""
        return cls(
            train_images=64,
            vision_steps=3,
            vision_batch_size=8,
            binding_steps=2,
            llm_steps=3,
            llm_batch_size=4,
            check_images=4,
            test_questions=8,
        )


# ---------------------------------------------------------------- data


def pixel_tensor(images, processor) -> torch.Tensor:
    """Images as the model's image processor makes them [n, 3, 64, 64]."""
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


PATCH_COVER = 9  # of a patch's 36 pixels an object must cover to be the patch's label


@dataclass
class VisionTargets:
    """Stage-1 labels of a pool of images."""

    bits: torch.Tensor  # [n, 45] float: pair present / in the left half / in the right half
    counts: torch.Tensor  # [n] objects - 1
    patches: torch.Tensor  # [n, patches] 0 background, else 1 + the pair index of the covering object
    left: torch.Tensor  # [patches] float: 1 for the patches in the image's left half

    def __getitem__(self, batch) -> VisionTargets:
        return VisionTargets(self.bits[batch], self.counts[batch], self.patches[batch], self.left)


def vision_targets(pool: list[Example], patch_size: int) -> VisionTargets:
    """The image-level labels (45 bits, the count) and the patch labels of each image."""
    bits = np.zeros((len(pool), 3, len(PAIRS)), dtype=np.float32)
    grid = IMAGE_SIZE // patch_size
    patches = np.zeros((len(pool), grid * grid), dtype=np.int64)
    for row, example in enumerate(pool):
        for obj in example.scene.objects:
            column = PAIRS.index(obj.pair)
            center = (obj.box[0] + obj.box[2]) / 2
            bits[row, 0, column] = 1
            bits[row, 1 if center < IMAGE_SIZE / 2 else 2, column] = 1
        cells = object_map(example.scene).reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3)
        cells = cells.reshape(grid * grid, -1)
        for number, obj in enumerate(example.scene.objects, 1):
            covered = (cells == number).sum(1) >= PATCH_COVER
            patches[row, covered] = 1 + PAIRS.index(obj.pair)
    counts = [len(example.scene.objects) - 1 for example in pool]
    left = torch.tensor([float(column < grid // 2) for _ in range(grid) for column in range(grid)])
    return VisionTargets(
        torch.from_numpy(bits.reshape(len(pool), -1)), torch.tensor(counts), torch.from_numpy(patches), left
    )


EXISTS_PER_ANSWER = 4  # at most this many "yes" questions per training image, and as many "no"


def training_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(question, answer) for every question of the task's four types that applies to the scene, not
    one of each as eval asks: more answers per image read (the language model's loss is on answers
    only). The color of every shape that occurs once; the count; up to EXISTS_PER_ANSWER present pairs
    ("yes") and as many absent ones ("no", half of them the hard kind when there is one, as eval's);
    the side of every pair that occurs once and lies in one half."""
    shape_counts = Counter(obj.shape for obj in scene.objects)
    pair_counts = Counter(obj.pair for obj in scene.objects)
    questions = binding_questions(scene)
    questions.append((TEMPLATES["count"], str(len(scene.objects))))
    present = sorted(pair_counts)
    present = [present[i] for i in rng.permutation(len(present))[:EXISTS_PER_ANSWER]]
    absent = [(color, shape) for color in COLORS for shape in SHAPES if (color, shape) not in pair_counts]
    asked_absent = []
    for _ in present:
        unasked = [pair for pair in absent if pair not in asked_absent]
        asked_absent.append(draw_absent_pair(unasked, shape_counts, rng))
    for pairs, answer in ((present, "yes"), (asked_absent, "no")):
        questions += [
            (TEMPLATES["exists"].format(color=color, shape=shape), answer) for color, shape in pairs
        ]
    for obj in scene.side_askable():
        questions.append((TEMPLATES["position"].format(color=obj.color, shape=obj.shape), scene.side_of(obj)))
    return questions


def binding_questions(scene: Scene) -> list[tuple[str, str]]:
    """(question, answer) for the color of every shape that occurs once: the one question type that only
    binding the shape named in the question to that object's color answers (a scene's colors alone answer
    most side questions, and the count needs neither)."""
    return [(TEMPLATES["color"].format(shape=obj.shape), obj.color) for obj in scene.color_askable()]


def named_pair(scene: Scene, question: str, answer: str) -> tuple[str, str] | None:
    """The (color, shape) of the objects a question is about, or None when the answer names none (the
    count, an absent pair): the objects whose patches the grounding loss points the language model at."""
    for obj in scene.objects:
        about = (
            TEMPLATES["color"].format(shape=obj.shape),
            TEMPLATES["position"].format(color=obj.color, shape=obj.shape),
            TEMPLATES["exists"].format(color=obj.color, shape=obj.shape) if answer == "yes" else None,
        )
        if question in about:
            return obj.pair
    return None


def training_conversation(
    example: Example, pairs: list[tuple[str, str]], rng: np.random.Generator, system_fraction: float
) -> tuple[Conversation, list[tuple[str, str] | None]]:
    """The (question, answer) `pairs` as one multi-turn vicuna_v1 conversation in a random order, the
    image in the first turn, the system prompt on `system_fraction` of them; with the `named_pair` of
    each answer in the conversation's order."""
    messages = [{"role": "system", "content": VICUNA_V1_SYSTEM}] if rng.random() < system_fraction else []
    named = []
    for turn, position in enumerate(rng.permutation(len(pairs))):
        question, answer = pairs[position]
        content = ([{"type": "image"}] if turn == 0 else []) + [{"type": "text", "text": question}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        named.append(named_pair(example.scene, question, answer))
    rendered = render_vicuna_v1(messages)
    return Conversation(example.image_name, example.index, rendered.text, rendered.answer_spans, []), named


def task_questions(example: Example, rng: np.random.Generator, questions: str) -> list[tuple[str, str]]:
    """The stage's questions about one image (`questions`: "all" or "task", see MiniRecipe)."""
    if questions == "all":
        return training_questions(example.scene, rng)
    return [(question.question, question.answer) for question in example.questions]


def schedule(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10%."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(parameters, lr: float, weight_decay: float, total: int, warmup_fraction: float):
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule(step, total, warmup_fraction)
    )
    return optimizer, scheduler


# ---------------------------------------------------------------- the two stages


class VisionObjective(nn.Module):
    """The tower's objective. On its pooled output of the last layer (CLIP: the [CLS] row; SigLIP: the
    attention-pooling head's output): the 45 pair bits (binary cross-entropy) and the object count
    (cross-entropy); on CLIP this is what teaches the last layer's [CLS] attention, which PruMerge reads,
    where the objects are. On the patch rows of the layer -2 hidden state (the features the language
    model reads; CLIP's less its [CLS] row 0, SigLIP's all): each patch's object, as (color, shape) or
    background, and the image's count (cross-entropies), the image's 45 pair bits and whether the patch
    is in the left half (binary cross-entropies)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.num_bits = 3 * len(PAIRS)
        self.class_head = nn.Linear(hidden_size, self.num_bits + MAX_OBJECTS)
        self.patch_head = nn.Linear(hidden_size, 1 + len(PAIRS) + 1)  # object, then left half
        self.count_head = nn.Linear(hidden_size, MAX_OBJECTS)
        self.scene_head = nn.Linear(hidden_size, self.num_bits)

    def forward(self, tower, pixel_values, targets: VisionTargets) -> torch.Tensor:
        output = tower(pixel_values=pixel_values, output_hidden_states=True)
        patches = output.hidden_states[-2][:, int(has_class_token(tower)) :]
        return self.loss(output.pooler_output, patches, targets)

    def loss(self, pooled, patches, targets: VisionTargets) -> torch.Tensor:
        """pooled [batch, hidden]; patches [batch, patches, hidden], the patch rows in patch order."""
        cross_entropy = nn.functional.cross_entropy
        logits = self.class_head(pooled)
        loss = nn.functional.binary_cross_entropy_with_logits(logits[:, : self.num_bits], targets.bits)
        loss = loss + cross_entropy(logits[:, self.num_bits :], targets.counts)
        patch_logits = self.patch_head(patches)
        loss = loss + cross_entropy(patch_logits[..., :-1].flatten(0, 1), targets.patches.flatten())
        left = targets.left.expand(len(patches), -1)
        loss = loss + nn.functional.binary_cross_entropy_with_logits(patch_logits[..., -1], left)
        scene_bits = targets.bits[:, None].expand(-1, patches.shape[1], -1)
        loss = loss + nn.functional.binary_cross_entropy_with_logits(self.scene_head(patches), scene_bits)
        counts = targets.counts[:, None].expand(-1, patches.shape[1])
        return loss + cross_entropy(self.count_head(patches).flatten(0, 1), counts.flatten())


def initialize_language_side(model, std: float) -> None:
    """Redraw the projector's and the language model's weights from N(0, std^2), biases zero.

    At transformers' default std, 0.02 (GPT-2's, for a width of 768), this 128-wide language model
    stalled for hundreds of steps, or for good, before it learned the presence question ("Is there a
    {color} {shape}?"); likely because attention scores, products of query and key weights that start
    small, grow slowly. At 0.1, about 1/sqrt(width), most runs learned it within 200 to 600 steps (the
    README has the runs)."""
    for part in (
        model.model.multi_modal_projector,
        model.model.language_model,
        model.get_output_embeddings(),
    ):
        for module in part.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])


def _share(batch: torch.Tensor) -> torch.Tensor:
    """This process's share of a batch that every process drew alike (all of it without data parallelism)."""
    if not dist.is_initialized():
        return batch
    return batch[dist.get_rank() :: dist.get_world_size()]


def _average_gradients(parameters, logged: torch.Tensor) -> np.ndarray:
    """Average the gradients and the `logged` losses [k] over the processes, so that every replica takes
    the same step (the mean over the whole batch); returns the losses."""
    logged = logged.detach().reshape(-1)
    if not dist.is_initialized():
        return logged.numpy()
    grads = [torch.zeros_like(param) if param.grad is None else param.grad for param in parameters]
    flat = torch.cat([grad.flatten() for grad in grads] + [logged])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    chunks = flat[: -len(logged)].split([grad.numel() for grad in grads])
    for param, chunk in zip(parameters, chunks, strict=True):
        param.grad = chunk.view_as(param)
    return flat[-len(logged) :].numpy()


def _step(loss, parameters, optimizer, scheduler, logged: torch.Tensor | None = None) -> np.ndarray:
    """One optimizer step on `loss`; returns the `logged` losses (default: the loss) averaged over the
    processes."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    logged_values = _average_gradients(parameters, loss if logged is None else logged)
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    scheduler.step()
    return logged_values


def train_vision_tower(tower, objective, pixels, targets, recipe: MiniRecipe, log) -> list[float]:
    """Stage 1: the tower and the heads on the vision objective alone; returns the losses."""
    parameters = [*tower.parameters(), *objective.parameters()]
    optimizer, scheduler = _optimizer(
        parameters, recipe.vision_lr, recipe.weight_decay, recipe.vision_steps, recipe.warmup_fraction
    )
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    tower.train()
    losses = []
    for step in range(recipe.vision_steps):
        batch = _share(torch.randint(len(pixels), (recipe.vision_batch_size,), generator=generator))
        loss = objective(tower, pixels[batch], targets[batch])
        losses.append(_step(loss, parameters, optimizer, scheduler)[0])
        if step % recipe.log_every == 0 or step == recipe.vision_steps - 1:
            log(
                f"vision step {step + 1}/{recipe.vision_steps}: loss {np.mean(losses[-recipe.log_every :]):.4f}"
            )
    tower.eval()
    return losses


@torch.no_grad()
def answer_accuracy(model, processor, questions, batch_size: int = 64) -> str:
    """Share of `questions` whose greedy first answer token is right, overall and per question type (a
    quick check during training; `llava-prumerge eval` is the measurement)."""
    from ..modeling.reduction_settings import ReductionSettings

    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()
    right = {}
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        prompts = [f"USER: <image>\n{q.question} ASSISTANT:" for q, _ in batch]
        inputs = processor(
            images=[image for _, image in batch], text=prompts, return_tensors="pt", padding=True
        )
        logits = model(**inputs, reduction=ReductionSettings(token_reduction="none")).logits[:, -1]
        for (question, _), token in zip(batch, logits.argmax(-1).tolist(), strict=True):
            expected = tokenizer(" " + question.answer, add_special_tokens=False)["input_ids"][0]
            right.setdefault(question.question_type, []).append(token == expected)
    model.train(was_training)
    overall = np.mean([hit for hits in right.values() for hit in hits])
    return f"{overall:.3f} (" + ", ".join(f"{kind} {np.mean(hits):.2f}" for kind, hits in right.items()) + ")"


@dataclass
class LanguagePhase:
    """One phase of stage 2: its conversations, the pool image each one shows, and how long it trains."""

    name: str  # in the log
    encoded: list[tuple[np.ndarray, np.ndarray]]  # token ids and labels of each conversation
    images: np.ndarray  # [conversations] row of the conversation's image in the pool's pixels
    steps: int
    seed: int  # of its batch draws
    grounding: list[np.ndarray]  # of each conversation: `answer_grounding`


def answer_grounding(
    ids: np.ndarray, labels: np.ndarray, named: list[tuple[str, str] | None], image_token_id: int
) -> np.ndarray:
    """[answers about an object, 3] of one encoded conversation, whose answers are about the `named`
    pairs in order: the index of its <image> token, the index of the token that predicts the answer's
    first token, and the pair's patch label (1 + its index in PAIRS, as `VisionTargets.patches`)."""
    starts = np.flatnonzero((labels[1:] != IGNORE_INDEX) & (labels[:-1] == IGNORE_INDEX)) + 1
    if len(starts) != len(named):
        raise ValueError(f"a conversation has {len(starts)} labelled answers but {len(named)} turns")
    [image] = np.flatnonzero(ids == image_token_id)
    rows = [
        (image, start - 1, 1 + PAIRS.index(pair)) for start, pair in zip(starts, named, strict=True) if pair
    ]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


GROUNDING_HEAD = 0  # the head of MiniRecipe.grounding_layer that the grounding loss teaches


def grounding_loss(
    attention: torch.Tensor,
    rows: torch.Tensor,
    queries: torch.Tensor,
    image_starts: torch.Tensor,
    named_patches: torch.Tensor,
) -> torch.Tensor:
    """Mean over answers of -log(the share of GROUNDING_HEAD's attention on the named object's patches).

    attention [batch, heads, sequence, sequence]: a layer's attention weights, every visual token in the
    sequence; rows, queries, image_starts [n]: each answer's batch row, the index of the token that
    predicts it and of its image's first visual token; named_patches [n, patches] bool."""
    weights = attention[rows, GROUNDING_HEAD, queries]  # [n, sequence]
    visual = weights.gather(1, image_starts[:, None] + torch.arange(named_patches.shape[1]))  # [n, patches]
    return -torch.log((visual * named_patches).sum(-1) + 1e-6).mean()


@contextmanager
def recorded_attention(model, layer: int):
    """Yields a dict that holds, after each forward pass, the attention weights of the language model's
    `layer` under "weights" [batch, heads, sequence, sequence]. The language model runs eager attention
    meanwhile: SDPA computes no weights."""
    language_model = model.model.language_model
    previous = language_model.config._attn_implementation
    recorded = {}

    def keep(module, inputs, output):  # LlamaAttention returns (output, weights)
        recorded["weights"] = output[1]

    language_model.set_attn_implementation("eager")
    handle = language_model.layers[layer].self_attn.register_forward_hook(keep)
    try:
        yield recorded
    finally:
        handle.remove()
        language_model.set_attn_implementation(previous)


def train_language_model(
    model, pixels, patch_labels, phase: LanguagePhase, recipe: MiniRecipe, pad_token_id: int, log, check=None
):
    """A phase of stage 2: projector and language model on the phase's conversations, every visual token
    given to it, the tower frozen (as LLaVA-1.5's CLIP), a fresh optimizer and schedule; the loss is the
    answers' plus recipe.grounding_weight times `grounding_loss` (`patch_labels`: `VisionTargets.patches`
    of the pool). Returns each step's answer and grounding losses [steps, 2]."""
    from ..modeling.reduction_settings import ReductionSettings

    everything = ReductionSettings(token_reduction="none")
    visual_tokens = patch_labels.shape[1]
    if model.model.image_placeholder_count() != visual_tokens:
        raise ValueError(
            f"the model gives its language model {model.model.image_placeholder_count()} visual tokens per "
            f"image, not the {visual_tokens} patches: the grounding loss needs visual token k to be patch k"
        )
    model.model.vision_tower.requires_grad_(False)
    parameters = [param for param in model.parameters() if param.requires_grad]
    optimizer, scheduler = _optimizer(
        parameters, recipe.llm_lr, recipe.weight_decay, phase.steps, recipe.warmup_fraction
    )
    collate = ConversationCollator(pad_token_id=pad_token_id)
    generator = torch.Generator().manual_seed(phase.seed)
    grounded = recipe.grounding_weight > 0
    recorder = recorded_attention(model, recipe.grounding_layer) if grounded else nullcontext({})
    model.train()
    losses = []  # [answer loss, grounding loss] of each step
    with recorder as attention:
        for step in range(phase.steps):
            batch = _share(
                torch.randint(len(phase.encoded), (recipe.llm_batch_size,), generator=generator)
            ).tolist()
            items = [
                {
                    "input_ids": torch.from_numpy(phase.encoded[i][0]),
                    "labels": torch.from_numpy(phase.encoded[i][1]),
                }
                for i in batch
            ]
            images = phase.images[batch]
            answer_loss = model(**collate(items), pixel_values=pixels[images], reduction=everything).loss
            grounding = torch.zeros(())
            answers = [(row, *entry) for row, i in enumerate(batch) for entry in phase.grounding[i].tolist()]
            if grounded and answers:
                rows, image_starts, predictors, labels = torch.tensor(answers).T
                # every visual token in the sequence: tokens after the <image> token move visual_tokens - 1 on
                queries = predictors + visual_tokens - 1
                named_patches = patch_labels[images][rows] == labels[:, None]
                grounding = grounding_loss(attention["weights"], rows, queries, image_starts, named_patches)
            loss = answer_loss + recipe.grounding_weight * grounding
            losses.append(
                _step(loss, parameters, optimizer, scheduler, torch.stack([answer_loss, grounding]))
            )
            if step % recipe.log_every == 0 or step == phase.steps - 1:
                answer_mean, grounding_mean = np.mean(losses[-recipe.log_every :], axis=0)
                log(
                    f"{phase.name} step {step + 1}/{phase.steps}: answer loss {answer_mean:.4f}, "
                    f"grounding loss {grounding_mean:.4f}"
                )
            if check is not None and (step + 1) % recipe.check_every == 0:
                log(f"  validation first-token accuracy: {check()}")
    model.eval()
    return losses


def language_phases(pool: list[Example], tokenizer, recipe: MiniRecipe) -> list[LanguagePhase]:
    """Stage 2's phases: first the binding questions alone (`binding_questions`, on the images that have
    one), then the task's questions (every image); with each answer's `answer_grounding`."""
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    phases = []
    # seed offsets of its conversations and of its batch draws
    for name, steps, questions_of, conversation_seed, batch_seed in (
        ("binding", recipe.binding_steps, lambda example, rng: binding_questions(example.scene), 3, 4),
        ("language", recipe.llm_steps, partial(task_questions, questions=recipe.questions), 0, 2),
    ):
        if not steps:
            continue
        rng = np.random.default_rng(recipe.seed + conversation_seed)
        conversations, named, images = [], [], []
        for row, example in enumerate(pool):
            if pairs := questions_of(example, rng):
                conversation, pairs_named = training_conversation(
                    example, pairs, rng, recipe.system_prompt_fraction
                )
                conversations.append(conversation)
                named.append(pairs_named)
                images.append(row)
        encoded = encode_conversations(tokenizer, conversations)
        grounding = [
            answer_grounding(ids, labels, pairs_named, image_token_id)
            for (ids, labels), pairs_named in zip(encoded, named, strict=True)
        ]
        phases.append(
            LanguagePhase(name, encoded, np.asarray(images), steps, recipe.seed + batch_seed, grounding)
        )
    return phases


def heldout_accuracy(weights_dir: Path, limit: int | None) -> float:
    """The saved (float16) weights' accuracy with every visual token on eval's test questions."""
    from ..evaluation.evaluate import evaluate_shapes_vqa
    from .model import load_mini

    model, processor = load_mini(weights_dir)
    with torch.inference_mode():
        [result], _ = evaluate_shapes_vqa(model, processor, ["none"], [], limit=limit)
    return result.scores.accuracy


GROUP_TIMEOUT = datetime.timedelta(minutes=5)  # for joining, and for each gradient exchange


def train_mini(out_dir: str | Path, recipe: MiniRecipe | None = None, log=print) -> dict:
    """Train the mini model from scratch with `recipe`; writes model.safetensors, tokenizer.json and
    training.json to `out_dir` (the layout `load_mini` reads) and returns the record. With
    `recipe.processes` > 1 this process is the first of them: it starts the others (torch.distributed,
    gloo, on this machine) and alone logs, checks, saves and tests."""
    recipe = recipe or MiniRecipe()
    if recipe.processes == 1:
        return _train_mini(Path(out_dir), recipe, log)
    spawn = torch.multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as rendezvous:
        store = f"file://{Path(rendezvous) / 'store'}"
        replicas = [
            spawn.Process(target=_replica, args=(store, rank, recipe), daemon=True)
            for rank in range(1, recipe.processes)
        ]
        for replica in replicas:
            replica.start()
        try:
            _join_group(store, 0, recipe.processes)
        except RuntimeError as error:
            for replica in replicas:
                replica.terminate()
            raise RuntimeError(
                f"the other {recipe.processes - 1} training process(es) did not join within "
                f"{GROUP_TIMEOUT}; their error is printed above"
            ) from error
        try:
            return _train_mini(Path(out_dir), recipe, log)
        except BaseException:  # an error or Ctrl-C here: the others would wait out GROUP_TIMEOUT
            for replica in replicas:
                replica.terminate()
            raise
        finally:
            dist.destroy_process_group()
            for replica in replicas:
                replica.join()


def _join_group(store: str, rank: int, processes: int) -> None:
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=processes, timeout=GROUP_TIMEOUT)


def _replica(store: str, rank: int, recipe: MiniRecipe) -> None:
    """A data-parallel process after the first: it trains its share of every batch, and nothing else."""
    _join_group(store, rank, recipe.processes)
    try:
        _train_mini(None, recipe, log=None)
    finally:
        dist.destroy_process_group()


def _train_mini(out_dir: Path | None, recipe: MiniRecipe, log) -> dict | None:
    """Both stages in this process (its share of each batch under data parallelism); then, in the first
    process, save, test and record. `out_dir` and `log` are None in the others."""
    started = time.perf_counter()
    print_line = log

    def log(message: str) -> None:
        if print_line is not None:
            print_line(f"[{time.perf_counter() - started:5.0f} s] {message}")

    torch.set_num_threads(recipe.threads)
    tokenizer = llava_fast_tokenizer(build_tokenizer())
    processor = mini_processor(tokenizer, recipe.tower)
    model = new_mini_model(tokenizer, seed=recipe.seed, tower=recipe.tower)

    log(f"generating {recipe.train_images} training images ...")
    pool = examples("train", recipe.train_images, image_size=IMAGE_SIZE)
    pixels = torch.cat(
        [pixel_tensor([e.image for e in pool[i : i + 512]], processor) for i in range(0, len(pool), 512)]
    )
    targets = vision_targets(pool, model.config.vision_config.patch_size)
    phases = language_phases(pool, tokenizer, recipe)
    data_seconds = time.perf_counter() - started

    stage = time.perf_counter()
    tower = model.model.vision_tower
    objective = VisionObjective(tower.config.hidden_size)
    vision_losses = train_vision_tower(tower, objective, pixels, targets, recipe, log)
    vision_seconds = time.perf_counter() - stage
    stage = time.perf_counter()
    torch.manual_seed(recipe.seed)  # the language side's start: the seed's alone, not what stage 1 left
    initialize_language_side(model, recipe.language_init_std)
    check = None  # the first process alone checks
    if out_dir is not None:
        validation = [(q, e.image) for e in examples("validation", recipe.check_images) for q in e.questions]
        check = partial(answer_accuracy, model, processor, validation)
    for phase in phases:  # the record keeps the last phase's losses
        llm_losses = train_language_model(
            model, pixels, targets.patches, phase, recipe, tokenizer.pad_token_id, log, check
        )
    llm_seconds = time.perf_counter() - stage
    if out_dir is None:
        return None

    save_mini_weights(model, tokenizer, out_dir)
    stage = time.perf_counter()
    test_accuracy = heldout_accuracy(out_dir, recipe.test_questions)
    log(f"test accuracy with every visual token: {test_accuracy:.3f} ({time.perf_counter() - stage:.0f} s)")
    record = {
        "recipe": asdict(recipe),
        "seconds": {
            "data": round(data_seconds, 1),
            "vision_tower": round(vision_seconds, 1),
            "language_model": round(llm_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "test_accuracy": {"none": test_accuracy, "questions": recipe.test_questions},
        "final_loss": {
            "vision_tower": float(np.mean(vision_losses[-50:])),
            "language_model": float(np.mean([answers for answers, _ in llm_losses[-50:]])),
            "grounding": float(np.mean([grounding for _, grounding in llm_losses[-50:]])),
        },
        "torch": torch.__version__,
        "tags": MODEL_CARD_TAGS,
    }
    (out_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {out_dir} in {record['seconds']['total']:.0f} s")
    return record
