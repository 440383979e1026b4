"""LLaVA-PruMerge: adaptive visual-token reduction for LLaVA-family models, as Hugging Face Transformers models.

Importing the package is cheap (the command line answers `--help` without torch): the public names
below load on first use, and the config and model classes are registered with transformers' Auto
classes as soon as transformers is imported (at once, when it already is).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.2.0"

# public name -> module (relative to this package) that defines it
_PUBLIC = {
    "LlavaPruMergeConfig": ".configuration.configuration_llava_prumerge",
    "LlavaPruMergeModel": ".modeling.modeling_llava_prumerge",
    "LlavaPruMergeForConditionalGeneration": ".modeling.modeling_llava_prumerge",
    "LlavaNextPruMergeConfig": ".configuration.configuration_llava_next_prumerge",
    "LlavaNextPruMergeModel": ".modeling.modeling_llava_next_prumerge",
    "LlavaNextPruMergeForConditionalGeneration": ".modeling.modeling_llava_next_prumerge",
    "VideoLlavaPruMergeConfig": ".configuration.configuration_video_llava_prumerge",
    "VideoLlavaPruMergeModel": ".modeling.modeling_video_llava_prumerge",
    "VideoLlavaPruMergeForConditionalGeneration": ".modeling.modeling_video_llava_prumerge",
    "LlavaOnevisionPruMergeConfig": ".configuration.configuration_llava_onevision_prumerge",
    "LlavaOnevisionPruMergeModel": ".modeling.modeling_llava_onevision_prumerge",
    "LlavaOnevisionPruMergeForConditionalGeneration": ".modeling.modeling_llava_onevision_prumerge",
    "Qwen2_5_VLPruMergeConfig": ".configuration.configuration_qwen2_5_vl_prumerge",
    "Qwen2_5_VLPruMergeModel": ".modeling.modeling_qwen2_5_vl_prumerge",
    "Qwen2_5_VLPruMergeForConditionalGeneration": ".modeling.modeling_qwen2_5_vl_prumerge",
    "Qwen2VLPruMergeConfig": ".configuration.configuration_qwen2_vl_prumerge",
    "Qwen2VLPruMergeModel": ".modeling.modeling_qwen2_vl_prumerge",
    "Qwen2VLPruMergeForConditionalGeneration": ".modeling.modeling_qwen2_vl_prumerge",
    "ReductionSettings": ".modeling.reduction_settings",
    "REDUCTION_DEFAULTS": ".modeling.reduction_settings",
    "ReducedTokens": ".modeling.token_reduction",
    "class_attention": ".modeling.token_reduction",
    "patch_importance": ".modeling.token_reduction",
    "reduce_visual_tokens": ".modeling.token_reduction",
    "PruMergeError": ".modeling.errors",
    "load_video_processor": ".common.video_processing",
    "VideoFramesProcessor": ".common.video_processing",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def register_auto_classes() -> None:
    """Map each PruMerge model type to its classes in AutoConfig, AutoModel, the image-text Auto classes and
    (fixed-budget processors) AutoProcessor."""
    import transformers

    from .architectures import ARCHITECTURES
    from .modeling.runtime_compat import image_text_auto_classes

    for arch in ARCHITECTURES:
        config_class = arch.load("config_class")
        transformers.AutoConfig.register(arch.model_type, config_class, exist_ok=True)
        transformers.AutoModel.register(config_class, arch.load("model_class"), exist_ok=True)
        for auto_class in image_text_auto_classes():
            auto_class.register(config_class, arch.load("head_class"), exist_ok=True)
        if arch.budget_processor:  # found by its name in fixed-budget Hub folders, without remote code
            transformers.AutoProcessor.register(config_class, arch.load("budget_processor"), exist_ok=True)


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Calls `register_auto_classes` once transformers is imported and none of this package's modules is
    still running (registering imports them: inside one's own import, that would be circular)."""

    def __init__(self):
        self.finding = False  # True while asking the other finders
        self.running = 0  # this package's modules being executed

    def find_spec(self, fullname, path, target=None):
        if self.finding or not (fullname == "transformers" or fullname.startswith(f"{__name__}.")):
            return None
        self.finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.finding = False
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = self.registering_after(
                spec.loader.exec_module, ours=fullname != "transformers"
            )
        return spec

    def registering_after(self, exec_module, ours: bool):
        def exec_then_register(module):
            self.running += ours
            try:
                exec_module(module)
            finally:
                self.running -= ours
            if not self.running and "transformers" in sys.modules and self in sys.meta_path:
                sys.meta_path.remove(self)
                register_auto_classes()

        return exec_then_register


if "transformers" in sys.modules:
    register_auto_classes()
elif not any(isinstance(finder, _RegisterWhenTransformersLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())
