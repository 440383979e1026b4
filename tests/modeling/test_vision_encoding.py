"""The partial CLIP encoder: the same patches, attention and keys as the published hook-based computation,
without running the layers nobody reads."""

import pytest
import torch

from llava_prumerge import reduce_visual_tokens
from llava_prumerge.modeling.token_reduction import class_attention
from llava_prumerge.testing.tiny import tiny_model


def published_tower_outputs(model, pixel_values):
    """Run the whole vision tower with hooks on the last layer's q/k, as the published code did."""
    tower = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)
    captured = {}
    last = tower.encoder.layers[-1].self_attn
    handles = [
        last.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
        last.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)),
    ]
    outputs = model.model.vision_tower(pixel_values, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    return outputs.hidden_states, captured["q"], captured["k"]


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_vision_path_equals_published_hooks_and_skips_the_dead_last_layer(processor, images, method):
    model = tiny_model(token_reduction=method)
    pixel_values = processor.image_processor(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden_states, queries, keys = published_tower_outputs(model, pixel_values)
        features = hidden_states[-2][:, 1:]
        expected = reduce_visual_tokens(
            features, class_attention(queries, keys), keys[:, 1:], token_reduction=method
        )

        tower = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)
        calls = []
        handle = tower.encoder.layers[-1].register_forward_hook(lambda *args: calls.append(1))
        reduced = model.reduce_image_tokens(pixel_values)
        handle.remove()
    assert not calls, "the last encoder layer's output is unused and must not be computed"
    assert len(set(reduced.num_tokens)) > 1, "images should keep different numbers of tokens"
    for image in range(len(images)):
        assert torch.equal(reduced.centers[image], expected.centers[image])
        torch.testing.assert_close(reduced.features[image], expected.features[image])


def test_heads_mean_and_an_earlier_reduction_layer(processor, images):
    model = tiny_model(class_attention="heads_mean", reduction_layer=1)
    pixel_values = processor.image_processor(images[:2], return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden_states, _, _ = published_tower_outputs(model, pixel_values)
        tower = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)
        layer = tower.encoder.layers[1]
        normed = layer.layer_norm1(hidden_states[1])
        queries, keys = layer.self_attn.q_proj(normed), layer.self_attn.k_proj(normed)
        attention = class_attention(queries, keys, "heads_mean", num_heads=4)
        expected = reduce_visual_tokens(hidden_states[-2][:, 1:], attention, keys[:, 1:])
        reduced = model.reduce_image_tokens(pixel_values)
    for image in range(2):
        torch.testing.assert_close(reduced.features[image], expected.features[image])
