"""The `llava_prumerge` model for lmms-eval (the evaluation harness the field uses for LLaVA-family models).

Registered through the `lmms_eval.models` entry-point group (see pyproject.toml): lmms-eval calls
`model_manifests()` and imports this module only when `--model llava_prumerge` is asked for, so
importing llava_prumerge never needs lmms-eval. Any PruMerge Hub folder or stock LLaVA-1.5 checkpoint
loads (a stock one becomes PruMerge, training-free); the reducer settings are model arguments:

    python -m lmms_eval --model llava_prumerge \\
        --model_args pretrained=DIR,token_reduction=prumerge_plus --tasks pope

Model arguments: pretrained (folder or Hub id, required), every `ReductionSettings` field
(token_reduction, adaptive, num_visual_tokens, reduction_ratio, iqr_scale, merge, merge_k, ...),
device (default cuda when available, else cpu), dtype (auto, float32, float16, bfloat16),
batch_size (default 1), max_new_tokens (default 128, when the task does not set it),
system_prompt (default: none; LLaVA-1.5's evaluation prompts pass none either).

Prompts go through the checkpoint's chat template, each image as an `<image>` item before the text
(as LLaVA-1.5 does); answers are decoded after the prompt and cut at the task's `until` strings.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from transformers import AutoProcessor

from ..common.loading import DTYPES, load_prumerge_model
from ..errors import UsageError
from ..modeling.reduction_settings import REDUCTION_FIELDS, ReductionSettings

MODEL_NAME = "llava_prumerge"


def model_manifests():
    """The entry point lmms-eval's registry calls: this package's model, found by its name."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(MODEL_NAME, simple_class_path=f"{__name__}.LlavaPruMergeLMMS")]


def parse_reduction_arguments(arguments: dict) -> dict:
    """Reducer fields from lmms-eval's model_args strings ("prumerge_plus", "False", "32", "0.125")."""
    fields = {}
    defaults = ReductionSettings()
    for name in REDUCTION_FIELDS:
        if name not in arguments:
            continue
        value, default = arguments.pop(name), getattr(defaults, name)
        if isinstance(value, str):
            if isinstance(default, bool):
                if value.lower() not in ("true", "false"):
                    raise UsageError(f"model argument {name} must be True or False, got {value!r}")
                value = value.lower() == "true"
            elif name == "num_visual_tokens":
                value = None if value.lower() == "none" else int(value)
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
        fields[name] = value
    ReductionSettings(**fields)  # validated here, with the field named in the error
    return fields


class LlavaPruMergeLMMS(lmms):
    """lmms-eval's interface (`generate_until`, `loglikelihood`) over a PruMerge model."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_new_tokens: int | str = 128,
        system_prompt: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        reduction = parse_reduction_arguments(kwargs)
        unknown = sorted(kwargs)
        if unknown:
            raise UsageError(
                f"unknown model argument(s) {unknown} for {MODEL_NAME}; use pretrained, device, dtype, "
                f"batch_size, max_new_tokens, system_prompt or the reducer fields {list(REDUCTION_FIELDS)}"
            )
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            dtype = "float16" if self._device.type == "cuda" else "float32"
        self._model = load_prumerge_model(pretrained, dtype=DTYPES[dtype], **reduction).to(self._device)
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.processor.tokenizer.padding_side = "left"
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = system_prompt
        self._rank, self._world_size = 0, 1

    # ------------------------------------------------------------ what lmms-eval reads

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # ------------------------------------------------------------ prompts

    def _messages(self, context: str, images: list, answer: str | None = None) -> list[dict]:
        text = context.replace("<image>", "").strip()
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return messages

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        visuals = [visual for visual in (visuals or []) if visual is not None]
        if any(not isinstance(visual, Image.Image) for visual in visuals):
            raise UsageError(
                f"{MODEL_NAME} takes images only; task {task!r} gave {type(visuals[0]).__name__}"
            )
        return [visual.convert("RGB") for visual in visuals]

    def _inputs(self, prompts: list[str], images: list):
        inputs = self.processor(images=images or None, text=prompts, return_tensors="pt", padding=True).to(
            self._device
        )
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        return inputs

    # ------------------------------------------------------------ the three requests

    @torch.inference_mode()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for start in range(0, len(requests), self.batch_size):
            chunk = [request.args for request in requests[start : start + self.batch_size]]
            gen_kwargs = dict(chunk[0][1])
            if any(args[1] != chunk[0][1] for args in chunk):  # different settings: one at a time
                answers += [a for args in chunk for a in self._generate([args], dict(args[1]))]
                continue
            answers += self._generate(chunk, gen_kwargs)
        return answers

    def _generate(self, chunk, gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        prompts, images = [], []
        for context, _, doc_to_visual, doc_id, task, split in chunk:
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            images += visuals
            prompts.append(
                self.processor.apply_chat_template(
                    self._messages(context, visuals), add_generation_prompt=True
                )
            )
        inputs = self._inputs(prompts, images)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        output = self._model.generate(
            **inputs,
            max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
            do_sample=temperature > 0,
            **({"temperature": temperature} if temperature > 0 else {}),
            num_beams=int(gen_kwargs.get("num_beams", 1)),
        )
        texts = self.processor.batch_decode(
            output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        answers = []
        for text in texts:
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            answers.append(text.strip())
        return answers

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]):
        """(negative log-likelihood of the continuation, whether greedy decoding gives it) per request,
        wrapped as lmms-eval 0.7's result type (its multiple-choice tasks pick the lowest loss)."""
        from lmms_eval.api.instance import GenerationResult

        results = []
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if not isinstance(continuation, str):
                continuation = continuation(self.task_dict[task][split][doc_id])
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = self.processor.apply_chat_template(
                self._messages(context, visuals), add_generation_prompt=True
            )
            full = self._inputs([prompt + " " + continuation.strip()], visuals)
            prompt_length = self._inputs([prompt], visuals)["input_ids"].shape[1]
            logits = self._model(**full).logits[0].float()  # the compacted prompt, then the continuation
            target = full["input_ids"][0, prompt_length:]
            predicted = logits[-len(target) - 1 : -1]
            nll = torch.nn.functional.cross_entropy(predicted, target, reduction="sum").item()
            greedy = bool((predicted.argmax(-1) == target).all())
            results.append(GenerationResult(text=(nll, greedy)))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME} does not run multi-round tasks")
