"""Independent references for what a PruMerge model's language model receives, built from stock parts only.

Each reference runs the stock model's vision tower in full, computes the published [CLS] attention
itself, reduces with the per-token loop oracle (`reducer_loop`), projects with the stock projector and
lays the tokens out as the model's documentation says; the stock language model then reads the prompt
with those tokens in place of each placeholder run. Nothing here calls the package's encoder, reducer,
layout or compaction, so a model that agrees with these references gets all four right. Only the
published reducer is covered (adaptive, attention order, summary token last, last layer's attention).
"""

from __future__ import annotations

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from .reducer_loop import reduce_visual_tokens_loop


def encode(tower, pixel_values: torch.Tensor, feature_layer: int):
    """The stock tower in full on [n, 3, H, W]: the feature layer's hidden state [n, 1+N, C] ([CLS] first),
    and the [CLS]-to-patch attention [n, N] and patch keys [n, N, D] of the last layer, published style:
    one head over the full width D, scale D^-0.5, softmax over [CLS] and patches, in the model dtype."""
    hidden_states = tower(pixel_values, output_hidden_states=True).hidden_states
    # transformers 4.x wraps the transformer in `vision_model`
    last = getattr(tower, "vision_model", tower).encoder.layers[-1]
    normed = last.layer_norm1(hidden_states[-2])  # hidden_states[-2] is the last layer's input
    queries, keys = last.self_attn.q_proj(normed), last.self_attn.k_proj(normed)  # [n, 1+N, D]
    scores = queries[:, :1].float() @ keys.float().transpose(1, 2) * keys.shape[-1] ** -0.5  # [n, 1, 1+N]
    attention = scores.softmax(dim=-1)[:, 0, 1:].to(queries.dtype)
    return hidden_states[feature_layer], attention, keys[:, 1:]


def reduce(patches: torch.Tensor, attention: torch.Tensor, keys: torch.Tensor, token_reduction: str):
    """The loop oracle with the adaptive defaults: per image its tokens [n_i, C] (summary token last) and the
    patch index behind each token but the summary token."""
    return reduce_visual_tokens_loop(patches, attention, keys, token_reduction)


def llava_image_tokens(stock, pixel_values: torch.Tensor, token_reduction: str, tower=None) -> list:
    """LLaVA-1.5: per image its reduced tokens in reducer order, projected: [n_i, hidden]."""
    tower = stock.model.vision_tower if tower is None else tower
    features, attention, keys = encode(tower, pixel_values, stock.config.vision_feature_layer)
    tokens, _ = reduce(features[:, 1:], attention, keys, token_reduction)  # [CLS] dropped ("default")
    return [stock.model.multi_modal_projector(image_tokens) for image_tokens in tokens]


def llava_next_image_tokens(stock, pixel_values: torch.Tensor, image_sizes, token_reduction: str) -> list:
    """LLaVA-NeXT: per image [n_i, hidden]: its base view reduced as a LLaVA-1.5 image; then per row of crops
    that row's kept tokens in the raster order of the unpadded crop map, its summary tokens (crops in
    order) and one `image_newline`. Each crop is reduced over the patches unpadding keeps only."""
    config, model = stock.config, stock.model
    view_size = config.vision_config.image_size
    side = view_size // config.vision_config.patch_size
    images = []
    for views, size in zip(pixel_values, image_sizes, strict=True):
        rows, cols = get_anyres_image_grid_shape(size.tolist(), config.image_grid_pinpoints, view_size)
        features, attention, keys = encode(
            model.vision_tower, views[: 1 + rows * cols], config.vision_feature_layer
        )
        patches = features[:, 1:]  # [views, N, C]
        base, _ = reduce(patches[:1], attention[:1], keys[:1], token_reduction)
        # The crop map of (crop * N + patch) ids, unpadded as stock unpads the crops' features: [H', W'].
        ids = torch.arange(rows * cols * side * side).view(rows, cols, side, side)
        unpadded = unpad_image(ids.permute(0, 2, 1, 3).reshape(1, rows * side, cols * side), size)[0]
        raster = {patch_id: place for place, patch_id in enumerate(unpadded.flatten().tolist())}
        pieces = [model.multi_modal_projector(base[0])]
        for grid_row in range(rows):
            kept, summaries = [], []  # kept: (raster place, token)
            for crop in range(grid_row * cols, (grid_row + 1) * cols):
                survivors = [p for p in range(side * side) if crop * side * side + p in raster]
                if not survivors:
                    continue
                in_crop = (1 + crop, survivors)  # the crop's view, its patches that unpadding keeps
                tokens, centers = reduce(
                    patches[in_crop][None], attention[in_crop][None], keys[in_crop][None], token_reduction
                )
                places = [raster[crop * side * side + survivors[center]] for center in centers[0]]
                kept += zip(places, tokens[0][: len(places)], strict=True)
                summaries += tokens[0][len(places) :]  # the crop's summary token
            in_raster_order = [token for _, token in sorted(kept, key=lambda pair: pair[0])]
            pieces.append(model.multi_modal_projector(torch.stack(in_raster_order + summaries)))
            pieces.append(model.image_newline[None])
        images.append(torch.cat(pieces))
    return images


def video_llava_video_tokens(stock, pixel_values_videos: torch.Tensor, token_reduction: str) -> list:
    """Video-LLaVA: per video [n_v, hidden]: frame by frame its [CLS] row of the feature layer (as stock keeps
    it), then its reduced patch tokens (summary token last), projected."""
    videos = []
    for frames in pixel_values_videos:
        features, attention, keys = encode(stock.model.video_tower, frames, stock.config.vision_feature_layer)
        tokens, _ = reduce(features[:, 1:], attention, keys, token_reduction)
        class_rows = features[:, :1]  # [frames, 1, C]
        frames_tokens = [torch.cat(pair) for pair in zip(class_rows, tokens, strict=True)]
        videos.append(stock.model.multi_modal_projector(torch.cat(frames_tokens)))
    return videos


def spliced_embeddings(stock, input_ids: torch.Tensor, attention_mask: torch.Tensor, items: dict) -> list:
    """Per prompt of the batch, its text embedded by the stock table with each placeholder run replaced by the
    next item of its token id: [L_i, hidden] (padding dropped). `items`: token id -> items in prompt order,
    prompts in batch order."""
    queues = {token_id: iter(tokens) for token_id, tokens in items.items()}
    prompts = []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        ids = ids[mask.bool()]
        values, lengths = ids.unique_consecutive(return_counts=True)  # runs of one token id
        runs = zip(values.tolist(), stock.get_input_embeddings()(ids).split(lengths.tolist()), strict=True)
        prompts.append(torch.cat([next(queues[token]) if token in queues else run for token, run in runs]))
    return prompts


def language_model_logits(stock, embeddings: torch.Tensor) -> torch.Tensor:
    """The stock language model and `lm_head` on one unpadded prompt: [L, hidden] -> [L, vocab]."""
    hidden = stock.model.language_model(inputs_embeds=embeddings[None]).last_hidden_state
    return stock.lm_head(hidden)[0]


def video_llava_video_items(stock, inputs, token_reduction: str) -> dict:
    """Video-LLaVA's reference items by placeholder id: its videos' tokens, and its images' when it has some."""
    items = {
        stock.config.video_token_id: video_llava_video_tokens(
            stock, inputs["pixel_values_videos"], token_reduction
        )
    }
    # the images under transformers 5.23's name or 4.x's (which 5.x processors still return by default)
    images = inputs.get("pixel_values", inputs.get("pixel_values_images"))
    if images is not None:
        items[stock.config.image_token_id] = llava_image_tokens(
            stock, images, token_reduction, stock.model.image_tower
        )
    return items


def received_by_language_model(model, inputs):
    """The model's output and the embeddings its language model received [B, L', hidden]."""
    received = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        hook.remove()
    return out, received[0]


def assert_matches_reference(model, stock, inputs, items: dict):
    """Per prompt, the embeddings received and the log-probabilities (padding aside) match the reference."""
    out, received = received_by_language_model(model, inputs)
    with torch.no_grad():
        expected = spliced_embeddings(stock, inputs["input_ids"], inputs["attention_mask"], items)
        for row, embeddings in enumerate(expected):
            kept = out.attention_mask[row].bool()
            torch.testing.assert_close(received[row][kept], embeddings, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                out.logits[row][kept].log_softmax(-1),
                language_model_logits(stock, embeddings).log_softmax(-1),
                rtol=0,
                atol=1e-4,
            )
