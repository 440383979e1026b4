"""The table of PruMerge architectures: which stock model each extends, its classes, its remote code.

Adding an architecture adds its configuration and modeling files and one row here; the Auto-class
registration, checkpoint loading, `export` and the Hub folders' remote code and `auto_map` all read
this table. Standard library only (the command line imports it without torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# Remote-code modules every architecture's Hub folder carries (paths relative to the package).
SHARED_REMOTE_MODULES = (
    "modeling.errors",
    "modeling.reduction_settings",
    "modeling.runtime_compat",
    "modeling.token_reduction",
    "modeling.vision_encoding",
    "modeling.anyres",
    "modeling.frames",
    "modeling.compaction",
    "modeling.modeling_prumerge",
    "configuration.configuration_prumerge",
)


@dataclass(frozen=True)
class Architecture:
    """One PruMerge model family."""

    name: str  # what users pick it by (`--arch` prefixes, messages)
    stock_model_type: str  # model_type of the stock checkpoints it wraps
    model_type: str  # model_type of its own checkpoints
    config_module: str  # relative to the package
    config_class: str
    modeling_module: str
    model_class: str  # the base model (AutoModel)
    head_class: str  # the generative model (AutoModelForImageTextToText)
    processor_class: str  # the stock processor its Hub folders name (processor_config.json)
    image_processor_type: str  # the stock image processor (preprocessor_config.json)
    video_processor_type: str | None = None  # the stock video processor (video_preprocessor_config.json)
    # the stock processor's own settings (processor_config.json), beside its image and video tokens
    processor_keys: tuple[str, ...] = (
        "num_additional_image_tokens",
        "patch_size",
        "vision_feature_select_strategy",
    )
    family_modules: tuple[str, ...] = ()  # remote-code modules its family shares (after the shared ones)
    processor_tokens: bool = (
        True  # whether processor_config.json names the placeholder tokens (Qwen-VL's takes none)
    )
    # "module.Class" (module relative to the package) of the processor of fixed-budget checkpoints, which
    # expands each image to exactly the budget; it travels as remote code in their Hub folders.
    budget_processor: str | None = None

    @property
    def remote_modules(self) -> tuple[str, ...]:
        """Package modules that travel in its Hub folders, dependencies first."""
        return (*SHARED_REMOTE_MODULES, *self.family_modules, self.config_module, self.modeling_module)

    @property
    def auto_map(self) -> dict[str, str]:
        """config.json `auto_map`: what each Auto class instantiates with trust_remote_code=True."""
        config_file, modeling_file = (
            module.rpartition(".")[2] for module in (self.config_module, self.modeling_module)
        )
        return {
            "AutoConfig": f"{config_file}.{self.config_class}",
            "AutoModel": f"{modeling_file}.{self.model_class}",
            "AutoModelForVision2Seq": f"{modeling_file}.{self.head_class}",  # transformers 4.x
            "AutoModelForImageTextToText": f"{modeling_file}.{self.head_class}",
        }

    def load(self, attribute: str):
        """The class named by one of this row's fields (imports torch and transformers)."""
        if attribute == "budget_processor":
            module, _, name = self.budget_processor.rpartition(".")
        else:
            module = self.config_module if attribute == "config_class" else self.modeling_module
            name = getattr(self, attribute)
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)


ARCHITECTURES = (
    Architecture(
        name="llava",
        stock_model_type="llava",
        model_type="llava_prumerge",
        config_module="configuration.configuration_llava_prumerge",
        config_class="LlavaPruMergeConfig",
        modeling_module="modeling.modeling_llava_prumerge",
        model_class="LlavaPruMergeModel",
        head_class="LlavaPruMergeForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_type="LlavaImageProcessor",  # do_pad: images padded to a square, as LLaVA-1.5 trained
        budget_processor="modeling.processing_llava_prumerge.LlavaPruMergeProcessor",
    ),
    Architecture(
        name="llava-next",
        stock_model_type="llava_next",
        model_type="llava_next_prumerge",
        config_module="configuration.configuration_llava_next_prumerge",
        config_class="LlavaNextPruMergeConfig",
        modeling_module="modeling.modeling_llava_next_prumerge",
        model_class="LlavaNextPruMergeModel",
        head_class="LlavaNextPruMergeForConditionalGeneration",
        processor_class="LlavaNextProcessor",
        image_processor_type="LlavaNextImageProcessor",
    ),
    Architecture(
        name="video-llava",
        stock_model_type="video_llava",
        model_type="video_llava_prumerge",
        config_module="configuration.configuration_video_llava_prumerge",
        config_class="VideoLlavaPruMergeConfig",
        modeling_module="modeling.modeling_video_llava_prumerge",
        model_class="VideoLlavaPruMergeModel",
        head_class="VideoLlavaPruMergeForConditionalGeneration",
        processor_class="VideoLlavaProcessor",
        image_processor_type="VideoLlavaImageProcessor",
        video_processor_type="VideoLlavaVideoProcessor",
    ),
    Architecture(
        name="llava-onevision",
        stock_model_type="llava_onevision",
        model_type="llava_onevision_prumerge",
        config_module="configuration.configuration_llava_onevision_prumerge",
        config_class="LlavaOnevisionPruMergeConfig",
        modeling_module="modeling.modeling_llava_onevision_prumerge",
        model_class="LlavaOnevisionPruMergeModel",
        head_class="LlavaOnevisionPruMergeForConditionalGeneration",
        processor_class="LlavaOnevisionProcessor",
        image_processor_type="LlavaOnevisionImageProcessor",
        video_processor_type="LlavaOnevisionVideoProcessor",
        processor_keys=("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio"),
    ),
    Architecture(
        name="qwen2.5-vl",
        stock_model_type="qwen2_5_vl",
        model_type="qwen2_5_vl_prumerge",
        config_module="configuration.configuration_qwen2_5_vl_prumerge",
        config_class="Qwen2_5_VLPruMergeConfig",
        modeling_module="modeling.modeling_qwen2_5_vl_prumerge",
        model_class="Qwen2_5_VLPruMergeModel",
        head_class="Qwen2_5_VLPruMergeForConditionalGeneration",
        processor_class="Qwen2_5_VLProcessor",
        image_processor_type="Qwen2VLImageProcessor",
        video_processor_type="Qwen2VLVideoProcessor",
        processor_keys=(),
        family_modules=("modeling.qwen_vision", "modeling.qwen_vl"),
        processor_tokens=False,
        budget_processor="modeling.processing_qwen_vl_prumerge.Qwen2_5_VLPruMergeProcessor",
    ),
    Architecture(
        name="qwen2-vl",
        stock_model_type="qwen2_vl",
        model_type="qwen2_vl_prumerge",
        config_module="configuration.configuration_qwen2_vl_prumerge",
        config_class="Qwen2VLPruMergeConfig",
        modeling_module="modeling.modeling_qwen2_vl_prumerge",
        model_class="Qwen2VLPruMergeModel",
        head_class="Qwen2VLPruMergeForConditionalGeneration",
        processor_class="Qwen2VLProcessor",
        image_processor_type="Qwen2VLImageProcessor",
        video_processor_type="Qwen2VLVideoProcessor",
        processor_keys=(),
        family_modules=("modeling.qwen_vision", "modeling.qwen_vl"),
        processor_tokens=False,
        budget_processor="modeling.processing_qwen_vl_prumerge.Qwen2VLPruMergeProcessor",
    ),
)


def architecture_named(name: str) -> Architecture:
    """The architecture users call `name` (e.g. `--arch video-llava`)."""
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise KeyError(f"no architecture {name!r}; choose one of {[arch.name for arch in ARCHITECTURES]}")


def architecture_for(model_type: str) -> Architecture | None:
    """The architecture whose own or stock checkpoints have this model_type."""
    return next(
        (arch for arch in ARCHITECTURES if model_type in (arch.model_type, arch.stock_model_type)), None
    )
