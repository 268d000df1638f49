"""A test-only web UI extension that tests/test_a1111_server.py links into its server's `extensions/`: it saves what
the first cross-attention K projection reads and returns in the next generation, and lists the Perfusion cards as
the extra-networks page builds them."""

from pathlib import Path

from modules import script_callbacks, shared, ui_extra_networks
from safetensors.torch import save_file

CARD_FIELDS = ("name", "description", "search_terms", "metadata")
_armed: list[Path] = []  # where the next K projection call is saved


def _first_key_projection(sd_model):
    forge = getattr(sd_model, "forge_objects", None)
    unet = forge.unet.model.diffusion_model if forge is not None else sd_model.model.diffusion_model
    return next(module.to_k for name, module in unet.named_modules() if name.endswith("attn2"))


def _record(path: Path) -> None:
    """Save the input and output (after every hook registered before this one) of the next K projection call."""

    def saved(_module, args: tuple, output) -> None:
        handle.remove()
        save_file({"input": args[0].detach().float().cpu().clone(),
                   "output": output.detach().float().cpu().clone()}, str(path))

    handle = _first_key_projection(shared.sd_model).register_forward_hook(saved)


def _before_step(_params) -> None:
    if _armed:
        _record(_armed.pop())


def _routes(_demo, app) -> None:
    @app.post("/perfusion-probe/v1/keys")
    def keys(body: dict) -> dict:
        _armed[:] = [Path(body["path"])]
        return {}

    @app.get("/perfusion-probe/v1/cards")
    def cards() -> list[dict]:
        page = next(p for p in ui_extra_networks.extra_pages if p.name == "perfusion")
        return [{key: item[key] for key in CARD_FIELDS} for item in page.list_items()]


script_callbacks.on_cfg_denoiser(_before_step)
script_callbacks.on_app_started(_routes)
