"""A test-only node pack that harness/comfy/server.py links into the test server's `custom_nodes/`: Perfusion Test
Keys saves the keys (K after its projection, with every patch applied) of the first cross-attention block in the first
sampling step, for comparing what K reads across runs."""

from pathlib import Path

from comfy.ldm.modules.attention import optimized_attention
from safetensors.torch import save_file

BLOCK = ("input", 1, 0)  # the first cross-attention layer of an SD1 UNet: input_blocks.1.1.transformer_blocks.0


class PerfusionTestKeys:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "probe"
    CATEGORY = "testing"

    def probe(self, model, path: str) -> tuple:
        target = Path(path)

        def attention(q, k, v, extra_options: dict):
            if not target.exists():
                save_file({"keys": k.detach().float().cpu().clone()}, str(target))
            return optimized_attention(q, k, v, extra_options["n_heads"])

        clone = model.clone()
        clone.set_model_attn2_replace(attention, *BLOCK)
        return (clone,)


NODE_CLASS_MAPPINGS = {"PerfusionTestKeys": PerfusionTestKeys}
