"""The "Perfusion" tab: train a concept from a folder of images; save region masks for `region=NAME`."""

from __future__ import annotations

import html

import gradio as gr
from modules import shared
from modules.call_queue import wrap_gradio_gpu_call

from perfusion_core import PerfusionError
from perfusion_core.images import loss_curve, to_pil
from perfusion_core.knobs import GATE
from perfusion_core.memory import CHECKPOINTING
from perfusion_core.patch import LOCKS

from .network import PerfusionNetwork
from .training import TrainRequest, train

# rows of (TrainRequest field, label); numbers with an integer default are integers
ROWS = (
    (("word", "Concept word (a new word, e.g. hugsy)"),),
    (("superclass", "Superclass (one token, e.g. teddy)"),),
    (("images", "Image folder (an alpha channel becomes a loss mask)"),),
    (("name", "File name in the concept folder (default: the word)"),),
    (("steps", "Steps"), ("batch_size", "Batch size"), ("grad_accum", "Gradient accumulation (0: 16 / batch)"),
     ("seed", "Seed")),
    (("lr_target", "Learning rate, value targets"), ("lr_embedding", "Learning rate, word"),
     ("beta", "Training gate β"), ("tau", "Training gate τ")),
    (("resolution", "Resolution"), ("save_every", "Checkpoint every N steps (0: end only)"),
     ("preview_every", "Preview every N steps (0: none)"), ("preview_steps", "Preview sampling steps")),
    (("preview_prompt", "Preview prompt ({} is the concept word)"),),
    (("resume", "Resume from the file's training state"),
     ("gradient_checkpointing", "Gradient checkpointing (less memory, slower; auto: where the card needs it)"),
     ("lock", "Lock (context: composes with other concepts in one prompt)")),
)


def _component(key: str, label: str, default) -> gr.components.Component:
    elem_id = f"perfusion_{key}"
    if key == "gradient_checkpointing":
        choice = next(name for name, value in CHECKPOINTING.items() if value is default)
        return gr.Dropdown(label=label, choices=list(CHECKPOINTING), value=choice, elem_id=elem_id)
    if key == "lock":
        return gr.Dropdown(label=label, choices=list(LOCKS), value=default, elem_id=elem_id)
    if isinstance(default, bool):
        return gr.Checkbox(label=label, value=default, elem_id=elem_id)
    if isinstance(default, (int, float)):
        return gr.Number(label=label, value=default, precision=0 if isinstance(default, int) else None,
                         elem_id=elem_id)
    return gr.Textbox(label=label, value=default, elem_id=elem_id)


def create_tab(network: PerfusionNetwork) -> list[tuple[gr.Blocks, str, str]]:
    defaults = TrainRequest(word="", superclass="", images="")
    inputs: dict[str, gr.components.Component] = {}
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row(equal_height=False):
            with gr.Column():
                dummy = gr.Textbox(visible=False)
                for row in ROWS:
                    with gr.Row():
                        for key, label in row:
                            inputs[key] = _component(key, label, getattr(defaults, key))
                with gr.Row():
                    start = gr.Button("Train", variant="primary", elem_id="perfusion_train")
                    stop = gr.Button("Interrupt", elem_id="perfusion_interrupt")
            with gr.Column():
                gr.HTML(elem_id="perfusion_train_progress", value="")
                gallery = gr.Gallery(label="Loss and previews", show_label=False, elem_id="perfusion_train_gallery",
                                     columns=2)
                status = gr.HTML(elem_id="perfusion_train_status", value="")
                with gr.Accordion("Regions", open=False):
                    gr.HTML("<p>A mask for <code>&lt;perfusion:NAME:0.7:region=MASK&gt;</code>: white where the "
                            "concept goes, at the image's aspect ratio. Named regions need none: left, right, top, "
                            "bottom, centre, top-left, top-right, bottom-left, bottom-right. Its strength: "
                            f"<code>:region_weight=W</code> (default {GATE['region_weight'].default:g}).</p>")
                    region_image = gr.Image(label="Mask", type="pil", image_mode="L", elem_id="perfusion_region_image")
                    region_name = gr.Textbox(label="Mask name", elem_id="perfusion_region_name")
                    save_region = gr.Button("Save mask", elem_id="perfusion_region_save")
                    region_status = gr.HTML(elem_id="perfusion_region_status", value="")

        names = list(inputs)

        def run(_task_id: str, *values):
            fields = dict(zip(names, values, strict=True))
            fields["gradient_checkpointing"] = CHECKPOINTING[fields["gradient_checkpointing"]]
            outcome = train(TrainRequest(**fields), network)
            images = [to_pil(loss_curve(outcome.losses)), *(str(p) for p in outcome.previews[-1:])]
            return images, f"<p>Saved {html.escape(str(outcome.path))} after {outcome.steps} steps.</p>"

        start.click(fn=wrap_gradio_gpu_call(run, extra_outputs=[gr.update()]), _js="perfusion_start_training",
                    inputs=[dummy, *inputs.values()], outputs=[gallery, status])
        stop.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])

        def store_region(image, name: str) -> str:
            if image is None:
                return "<p>Upload a mask image first.</p>"
            try:
                path = network.library.save_region(name.strip(), image)
            except PerfusionError as error:
                return f"<p>{html.escape(str(error))}</p>"
            return f"<p>Saved {html.escape(str(path))}: use region={html.escape(name.strip())}.</p>"

        save_region.click(fn=store_region, inputs=[region_image, region_name], outputs=[region_status])
    return [(tab, "Perfusion", "perfusion")]
