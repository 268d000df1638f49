"""The node pack on a full-size SDXL in a real ComfyUI (`COMFYUI_PATH` and `COMFYUI_SDXL=1`).

ComfyUI recognises SDXL only by its real shapes, so the UNet is the full 2.6 B-parameter one with random
weights (built once into the test cache: 5 GB in fp16; ComfyUI holds it in fp32 on the CPU, about 14 GB of
memory in all), with its two CLIP text encoders and a TAESD VAE, loaded by UNETLoader, DualCLIPLoader and
VAELoader. Images are 64×64 pixels, two sampling steps.
"""

from __future__ import annotations

import os

import pytest

from harness.comfy.graphs import fresh, render
from harness.comfy.server import ComfyError, cache_dir, comfyui_trees, running_server

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not comfyui_trees(), reason="set COMFYUI_PATH to a ComfyUI checkout to run the ComfyUI tests"),
    pytest.mark.skipif(os.environ.get("COMFYUI_SDXL") != "1",
                       reason="set COMFYUI_SDXL=1 as well to run the full-size SDXL tests (about 14 GB of memory)"),
]
SDXL = {"sdxl": True, "steps": 2}


@pytest.fixture(scope="module", params=comfyui_trees(), ids=str)
def server(request):
    from harness.comfy.graphs import test_concept, write_concept

    with running_server(request.param, threads=2, sdxl=True) as s:
        models = cache_dir() / "models"
        write_concept(s.perfusion_dir, "hugsy", test_concept(models / "sdxl.layers.json", "hugsy", 0, family="sdxl"))
        write_concept(s.perfusion_dir, "sdsy", test_concept(models / "tiny-sd15.layers.json", "sdsy", 1))
        yield s


def test_sdxl_concept_changes_the_image_and_leaves_no_trace(server):
    before = fresh(server, **SDXL)
    applied = render(server, concepts=({"name": "hugsy.safetensors"},), **SDXL)
    assert applied != before
    assert render(server, **SDXL) == before


def test_sd1_concept_on_sdxl_is_refused_by_name(server):
    with pytest.raises(ComfyError) as failure:
        render(server, concepts=({"name": "sdsy.safetensors"},), **SDXL)
    message = str(failure.value)
    assert "IncompatibleConceptError" in message and "sd1" in message and "sdxl" in message, message
