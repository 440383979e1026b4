"""GPU checks: the reducer and the model on CUDA in fp32/fp16/bf16, accelerate device maps that
split the model between GPU and CPU, a Hub folder loaded with remote code onto the GPU, and the
LoRA recipe in mixed precision. Skipped where no CUDA device is present (CI has none); run them
on a GPU machine with `bash scripts/gpu_checks.sh`."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from PIL import Image

from llava_prumerge import LlavaPruMergeForConditionalGeneration, cli, reduce_visual_tokens
from llava_prumerge.benchmarks.reducer import realistic_inputs
from llava_prumerge.hub_upload import export
from llava_prumerge.testing.tiny import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["USER: <image>\nWhat is shown in this image? ASSISTANT:", "USER: <image>\nColours? ASSISTANT:"]
NEW_TOKENS = 5
HALF_DTYPES = [torch.float16, torch.bfloat16]


def batch(processor, images, device="cpu", dtype=torch.float32):
    inputs = processor(images=images, text=PROMPTS[: len(images)], return_tensors="pt", padding=True)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs.to(device)


def greedy(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[:, -NEW_TOKENS:].cpu()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, model, processor):
    folder = tmp_path_factory.mktemp("cuda-model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the reducer


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
def test_reducer_on_cuda_keeps_the_same_patches_as_on_cpu(method, dtype):
    """Same dtype, same input values: the IQR count and the ranking are exact on both devices; the
    merged sums differ only by the GPU's summation order."""
    inputs = [t.to(dtype) for t in realistic_inputs(batch=6, seed=3)]
    on_cpu = reduce_visual_tokens(*inputs, token_reduction=method)
    on_gpu = reduce_visual_tokens(*[t.cuda() for t in inputs], token_reduction=method)
    assert on_gpu.num_tokens == on_cpu.num_tokens
    for cpu_centers, gpu_centers in zip(on_cpu.centers, on_gpu.centers, strict=True):
        assert torch.equal(gpu_centers.cpu(), cpu_centers)
    tolerance = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for cpu_tokens, gpu_tokens in zip(on_cpu.features, on_gpu.features, strict=True):
        assert gpu_tokens.device.type == "cuda" and gpu_tokens.dtype == dtype
        torch.testing.assert_close(gpu_tokens.cpu(), cpu_tokens, rtol=tolerance, atol=tolerance)


def test_reducer_gradients_flow_on_cuda():
    features, attention, keys = (t.cuda() for t in realistic_inputs(batch=2, seed=4))
    features.requires_grad_(True)
    reduced = reduce_visual_tokens(features, attention, keys, token_reduction="prumerge_plus")
    torch.stack([tokens.sum() for tokens in reduced.features]).sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


# ---------------------------------------------------------------- the model on one GPU


def test_model_on_cuda_in_fp32_matches_cpu(model, processor, images):
    gpu_model = copy.deepcopy(model).cuda()
    inputs = batch(processor, images[:2])
    with torch.no_grad():
        expected = model(**inputs)
        out = gpu_model(**inputs.to("cuda"))
    assert out.visual_token_counts == expected.visual_token_counts
    mask = expected.attention_mask.bool()
    torch.testing.assert_close(out.logits.cpu()[mask], expected.logits[mask], rtol=1e-4, atol=1e-4)
    assert torch.equal(greedy(gpu_model, inputs), greedy(model, batch(processor, images[:2])))


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_half_precision_on_cuda_forward_generate_and_pipeline(model, processor, images, dtype):
    gpu_model = copy.deepcopy(model).to("cuda", dtype)
    inputs = batch(processor, images[:2], "cuda", dtype)
    with torch.no_grad():
        out = gpu_model(**inputs)
        full = model(**batch(processor, images[:2]))
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    reference_counts = gpu_model.reduce_image_tokens(inputs["pixel_values"]).num_tokens
    assert out.visual_token_counts == reference_counts
    assert all(0 < count < gpu_model.config.image_seq_length for count in reference_counts)
    # Half precision can move a patch across the IQR fence, not much more.
    assert all(
        abs(a - b) <= 2 for a, b in zip(out.visual_token_counts, full.visual_token_counts, strict=True)
    )
    assert greedy(gpu_model, inputs).shape == (2, NEW_TOKENS)

    pipe = transformers.pipeline("image-text-to-text", model=gpu_model, processor=processor)
    answer = pipe(images=images[0], text=PROMPTS[0], max_new_tokens=NEW_TOKENS, return_full_text=False)
    assert isinstance(answer[0]["generated_text"], str)


def test_sdpa_and_eager_agree_on_cuda_in_fp16(saved_model, processor, images):
    logits = {}
    inputs = batch(processor, images[:2], "cuda", torch.float16)
    for implementation in ("eager", "sdpa"):
        loaded = LlavaPruMergeForConditionalGeneration.from_pretrained(
            saved_model, attn_implementation=implementation, dtype=torch.float16
        ).cuda()
        with torch.no_grad():
            out = loaded(**inputs)
        logits[implementation] = out.logits[out.attention_mask.bool()].float()
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=2e-2, atol=2e-2)


def synchronizations(function) -> int:
    """How many times `function` made the host wait for the GPU (torch's sync debug mode warns at each)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(warning.message) for warning in caught)


@pytest.mark.parametrize(
    "fields",
    [
        {"token_reduction": "prumerge_plus", "adaptive": False, "num_visual_tokens": 64},
        {"token_reduction": "prumerge"},
        {"token_reduction": "prumerge_plus"},
    ],
    ids=["fixed-64", "adaptive-prumerge", "adaptive-prumerge_plus"],
)
def test_a_forward_waits_for_the_gpu_at_most_once_more_than_stock(tester, processor, images, fields):
    """The finite checks, an adaptive selection's counts and the prompt's layout come back in one read
    (`HostReads`); the language model's own synchronizations are stock's."""
    model = tester.get_model(seed=1, **fields).cuda()
    stock = tester.get_stock_model(seed=1).cuda()
    inputs = batch(processor, images[:1], "cuda")
    with torch.no_grad():
        for warm_up in (model, stock):  # lazy initialization synchronizes once
            warm_up(**inputs)
        ours = synchronizations(lambda: model(**inputs))
        theirs = synchronizations(lambda: stock(**inputs))
    assert ours <= theirs + 1, (ours, theirs)


# ---------------------------------------------------------------- accelerate: GPU and CPU together


@pytest.mark.parametrize(
    "device_map",
    [
        "auto",
        {
            "model.vision_tower": 0,
            "model.multi_modal_projector": 0,
            "model.language_model": "cpu",
            "lm_head": "cpu",
        },
        {
            "model.vision_tower": "cpu",
            "model.multi_modal_projector": "cpu",
            "model.language_model": 0,
            "lm_head": 0,
        },
    ],
    ids=["auto-small-gpu-memory", "vision-on-gpu", "llm-on-gpu"],
)
def test_device_maps_across_gpu_and_cpu_give_the_cpu_model_output(
    saved_model, model, processor, images, device_map
):
    # With "auto", a GPU budget of about half the model puts the rest on the CPU.
    kwargs = {"max_memory": {0: 250_000, "cpu": 10**9}} if device_map == "auto" else {}
    mapped = LlavaPruMergeForConditionalGeneration.from_pretrained(
        saved_model, device_map=device_map, **kwargs
    )
    assert {"0", "cpu"} <= {str(device) for device in mapped.hf_device_map.values()}
    inputs = batch(processor, images[:2])
    with torch.no_grad():
        out = mapped(**inputs)
        expected = model(**inputs)
    assert out.visual_token_counts == expected.visual_token_counts
    mask = expected.attention_mask.bool()
    torch.testing.assert_close(out.logits.cpu()[mask], expected.logits[mask], rtol=1e-4, atol=1e-4)
    assert torch.equal(greedy(mapped, inputs), greedy(model, inputs))


REMOTE_GPU_LOAD = """
import sys
sys.modules["llava_prumerge"] = None  # a user's machine: this package is not installed
import json
import torch
import transformers
from PIL import Image

spec = json.loads(open(sys.argv[1]).read())
major = int(transformers.__version__.split(".")[0])
auto = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
model = auto.from_pretrained(spec["folder"], trust_remote_code=True, device_map="auto", dtype=torch.float16)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert model.device.type == "cuda", model.device
processor = transformers.AutoProcessor.from_pretrained(spec["folder"], trust_remote_code=True)
inputs = processor(images=Image.open(spec["image"]), text=spec["prompt"], return_tensors="pt").to(model.device)
inputs["pixel_values"] = inputs["pixel_values"].half()
with torch.no_grad():
    out = model(**inputs)
assert out.logits.dtype == torch.float16 and bool(torch.isfinite(out.logits).all())
assert abs(out.visual_token_counts[0] - spec["count"]) <= 2, (out.visual_token_counts, spec["count"])
sequences = model.generate(**inputs, max_new_tokens=4, do_sample=False)
assert sequences.shape[1] == out.logits.shape[1] + 4, (sequences.shape, out.logits.shape)
print("remote code on GPU OK under transformers", transformers.__version__)
"""


def test_exported_folder_loads_onto_the_gpu_with_remote_code(tmp_path, model, processor, images):
    folder = export.save_hub_folder(model, processor, tmp_path / "hub")
    images[0].save(tmp_path / "image.png")
    inputs = processor(images=images[0], text=PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        count = model(**inputs).visual_token_counts[0]
    spec = {"folder": str(folder), "image": str(tmp_path / "image.png"), "prompt": PROMPTS[0], "count": count}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "load.py").write_text(REMOTE_GPU_LOAD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, "load.py", "spec.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "remote code on GPU OK" in result.stdout


# ---------------------------------------------------------------- training on the GPU


@pytest.mark.parametrize("precision", ["--bf16", "--fp16"])
def test_lora_recipe_trains_in_mixed_precision_and_exports(tmp_path, saved_model, precision):
    images = tmp_path / "images"
    images.mkdir()
    samples = []
    for index, (answer, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 4):
        Image.new("RGB", (64, 48), rgb).save(images / f"{index}.png")
        question = {"from": "human", "value": "<image>\nWhat color is this?"}
        samples.append(
            {
                "id": f"c{index}",
                "image": f"{index}.png",
                "conversations": [question, {"from": "gpt", "value": answer}],
            }
        )
    (tmp_path / "data.json").write_text(json.dumps(samples))
    output_dir = tmp_path / "run"
    cli.main(
        ["train", "--model", str(saved_model), "--data", str(tmp_path / "data.json"),
         "--image-folder", str(images), "--output-dir", str(output_dir), "--max-steps", "6",
         "--save-steps", "6", "--logging-steps", "1", "--per-device-batch-size", "4", "--lora-r", "8",
         "--lora-alpha", "16", "--num-workers", "0", "--learning-rate", "1e-2", precision]
    )  # fmt: skip
    history = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    merged = LlavaPruMergeForConditionalGeneration.from_pretrained(output_dir / "merged")
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in tiny_model().parameters())
