"""Fixtures of the demo tests: Video-LLaVA checkpoint folders on disk, as users have them."""

import json

import pytest


@pytest.fixture(scope="session")
def video_checkpoints(tmp_path_factory, video_tester):
    """{"stock": a stock Video-LLaVA folder, "prumerge": a PruMerge one}, each with the processor files
    `VideoLlavaProcessor.save_pretrained` writes under transformers 4.57. They are written without the
    video processor, which needs torchvision: its config is the image processor's, with its own type."""
    root = tmp_path_factory.mktemp("video-checkpoints")
    image_processor = video_tester.image_processor
    video_processor = {
        **{key: value for key, value in image_processor.to_dict().items() if key != "image_processor_type"},
        "video_processor_type": "VideoLlavaVideoProcessor",
        "processor_class": "VideoLlavaProcessor",
    }
    processor = {
        "processor_class": "VideoLlavaProcessor",
        "patch_size": video_tester.get_config().vision_config.patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "image_token": "<image>",
        "video_token": "<video>",
    }
    folders = {"stock": root / "stock", "prumerge": root / "prumerge"}
    for name, model in (("stock", video_tester.get_stock_model()), ("prumerge", video_tester.get_model())):
        model.save_pretrained(folders[name])
        video_tester.tokenizer.save_pretrained(folders[name])
        image_processor.save_pretrained(folders[name])
        (folders[name] / "video_preprocessor_config.json").write_text(json.dumps(video_processor))
        (folders[name] / "processor_config.json").write_text(json.dumps(processor))
    return folders
