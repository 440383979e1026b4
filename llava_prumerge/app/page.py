"""The app's page (Gradio): a thin layout over `runs`, and the server that `llava-prumerge app` and a Space
start. Bad input shows its one-line message in the page's status line, and as a warning toast."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from ..common.cli_args import COMPARED_METHODS
from ..demo.cli import DRAWN_METHODS
from ..errors import PruMergeError
from .runs import AppModel, load_app_model, result_pictures, results_table, run_methods

MAX_FILE_SIZE = "20mb"  # an upload past it is refused by Gradio itself, with its own message
INTRODUCTION = (
    "# LLaVA-PruMerge: which visual tokens reach the language model\n"
    "Upload {noun} (or pick a sample), ask a question and choose methods: each is drawn beside the others "
    "(kept patches marked, every pruned patch tinted with the kept token it was merged into), and the table "
    "gives the visual tokens that reached the LLM, the stage times and the answer.\n\n"
    "Model: {model}"
)


def build_app(app_model: AppModel) -> gr.Blocks:
    """The page: inputs on the left, the pictures side by side and the table on the right."""
    samples = {path.name: path for path in app_model.samples}
    noun = "a video (animated GIF or MP4)" if app_model.kind == "video" else "an image"
    with gr.Blocks(title="LLaVA-PruMerge", analytics_enabled=False) as page:
        gr.Markdown(INTRODUCTION.format(noun=noun, model=app_model.description))
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label=f"upload {noun}", type="filepath", elem_id="upload")
                sample = gr.Dropdown(
                    list(samples), value=next(iter(samples), None), label="or a sample", elem_id="sample"
                )
                question = gr.Textbox(
                    label="question", placeholder=app_model.default_question, elem_id="question"
                )
                methods = gr.CheckboxGroup(
                    list(COMPARED_METHODS), value=list(COMPARED_METHODS), label="methods"
                )
                budgets = gr.Textbox(
                    label=f"fixed budgets for {' and '.join(DRAWN_METHODS)} (tokens, comma-separated)",
                    placeholder="e.g. 16,64",
                    elem_id="budgets",
                )
                submit = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                pictures = gr.Gallery(
                    label="what each method kept", columns=3, object_fit="contain", elem_id="pictures"
                )
                table = gr.Markdown(elem_id="results")

        def run(upload_path, sample_name, question_text, chosen, budget_text):
            path = upload_path or samples.get(sample_name)
            started = time.perf_counter()
            try:
                media, results = run_methods(app_model, path, question_text, chosen, budget_text)
            except (PruMergeError, OSError) as error:
                gr.Warning(str(error))
                return [], "", f"**Not run:** {error}"
            done = f"{len(results)} methods on {Path(path).name} in {time.perf_counter() - started:.1f} s"
            return result_pictures(results, media), results_table(results), done

        submit.click(run, [upload, sample, question, methods, budgets], [pictures, table, status])
    return page


def serve(model: str | None, host: str | None = None, port: int | None = None) -> None:
    """Load `model` (a bad one fails here, before any page is served), then serve its page until stopped;
    `host` and `port` default to Gradio's (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, as a Space sets them)."""
    print(f"Loading {model or 'the mini model'} ...", flush=True)
    page = build_app(load_app_model(model))
    page.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, show_error=False)
