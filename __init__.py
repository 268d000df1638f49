"""Perfusion as a ComfyUI custom node pack (this folder, cloned into `custom_nodes/`).

Outside ComfyUI (pytest, AUTOMATIC1111, a plain import) this module defines nothing beyond
`WEB_DIRECTORY`: the nodes need ComfyUI's `comfy_api`.
"""

WEB_DIRECTORY = "./web"

try:
    import comfy_api.v0_0_2  # noqa: F401
except ImportError:  # not running inside ComfyUI, or in one older than the node API
    import importlib.util
    import logging

    if importlib.util.find_spec("comfy") is not None:
        logging.getLogger(__name__).error("Perfusion: the nodes need ComfyUI 0.3.48 or newer (its versioned node "
                                          "API comfy_api.v0_0_2); update ComfyUI to use them")
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
