"""The vLLM plugin: vLLM calls `register` in each of its processes (entry point group `vllm.general_plugins`).

Nothing here runs unless vLLM loads the plugin; the model module, which imports vLLM, is named by
string and imported by vLLM when a PruMerge checkpoint is loaded.
"""

from __future__ import annotations

ARCHITECTURES = {  # config.architectures[0] of a PruMerge Hub folder -> the vLLM model class serving it
    "LlavaPruMergeForConditionalGeneration": "llava_prumerge.serving.vllm_model:LlavaPruMergeForConditionalGeneration",
    "LlavaNextPruMergeForConditionalGeneration": (
        "llava_prumerge.serving.vllm_anyres:LlavaNextPruMergeForConditionalGeneration"
    ),
    "LlavaOnevisionPruMergeForConditionalGeneration": (
        "llava_prumerge.serving.vllm_anyres:LlavaOnevisionPruMergeForConditionalGeneration"
    ),
    "Qwen2_5_VLPruMergeForConditionalGeneration": (
        "llava_prumerge.serving.vllm_qwen:Qwen2_5_VLPruMergeForConditionalGeneration"
    ),
    "Qwen2VLPruMergeForConditionalGeneration": (
        "llava_prumerge.serving.vllm_qwen:Qwen2VLPruMergeForConditionalGeneration"
    ),
}


def register() -> None:
    """Map PruMerge's model types to its config classes (transformers' AutoConfig) and its architectures to
    the vLLM model classes, so that vLLM loads an exported folder without trust_remote_code."""
    from vllm import ModelRegistry

    from .. import register_auto_classes

    register_auto_classes()
    for architecture, model_class in ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, model_class)
