"""Perfusion for AUTOMATIC1111, Forge and reForge: the `<perfusion:NAME:BETA>` extra network, the concept
cards, infotext, and the Perfusion training tab. The work is done in `perfusion_a1111` and `perfusion_core`,
imported here while the web UI has this extension's folder on `sys.path`."""

import os

from modules import extra_networks, paths, script_callbacks, scripts, sd_models, shared, ui_extra_networks

from perfusion_a1111 import api, forge, paste, ui
from perfusion_a1111.library import ConceptLibrary
from perfusion_a1111.network import PerfusionNetwork
from perfusion_a1111.page import PerfusionPage

folder = getattr(shared.cmd_opts, "perfusion_dir", None) or os.path.join(paths.models_path, "perfusion")
os.makedirs(folder, exist_ok=True)
library = ConceptLibrary(folder)
network = PerfusionNetwork(library)


def before_ui() -> None:
    extra_networks.register_extra_network(network)
    ui_extra_networks.register_page(PerfusionPage(library))


class PerfusionScript(scripts.Script):
    """Always on, without controls: on Forge and reForge it patches each sampling pass's UNet clone."""

    def title(self) -> str:
        return "Perfusion"

    def show(self, is_img2img: bool):
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p, *args, **kwargs) -> None:
        forge.patch_clone(p, network.global_lock.key_input)


script_callbacks.on_before_ui(before_ui)
# the loaded model as it is: `shared.sd_model` would load one
script_callbacks.on_script_unloaded(lambda: network.unload(getattr(sd_models.model_data, "sd_model", None)))
script_callbacks.on_infotext_pasted(lambda infotext, params: paste.rename_by_hash(params, library))
script_callbacks.on_app_started(lambda _demo, app: api.add_routes(app, network))
script_callbacks.on_ui_tabs(lambda: ui.create_tab(network))
