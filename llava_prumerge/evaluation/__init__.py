"""Evaluation: the Shapes-VQA task, its scoring, `llava-prumerge eval`, and the lmms-eval bridge."""
