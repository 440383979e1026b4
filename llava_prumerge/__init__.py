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
    "ReductionSettings": ".modeling.reduction_settings",
    "REDUCTION_DEFAULTS": ".modeling.reduction_settings",
    "ReducedTokens": ".modeling.token_reduction",
    "class_attention": ".modeling.token_reduction",
    "reduce_visual_tokens": ".modeling.token_reduction",
    "PruMergeError": ".modeling.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def register_auto_classes() -> None:
    """Map each PruMerge model type to its classes in AutoConfig, AutoModel and the image-text Auto classes."""
    import transformers

    from .architectures import ARCHITECTURES
    from .modeling.runtime_compat import image_text_auto_classes

    for arch in ARCHITECTURES:
        config_class = arch.load("config_class")
        transformers.AutoConfig.register(arch.model_type, config_class, exist_ok=True)
        transformers.AutoModel.register(config_class, arch.load("model_class"), exist_ok=True)
        for auto_class in image_text_auto_classes():
            auto_class.register(config_class, arch.load("head_class"), exist_ok=True)


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Calls `register_auto_classes` right after the first `import transformers` has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def load_then_register(module):
                load(module)
                register_auto_classes()

            spec.loader.exec_module = load_then_register
        return spec


if "transformers" in sys.modules:
    register_auto_classes()
elif not any(isinstance(finder, _RegisterWhenTransformersLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())
