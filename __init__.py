"""Perfusion as a ComfyUI custom node pack (this folder, cloned into `custom_nodes/`).

Outside ComfyUI (pytest, AUTOMATIC1111, a plain import) this module defines nothing beyond
`WEB_DIRECTORY`: the nodes need ComfyUI's `comfy_api`.
"""

WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401
except ImportError:  # not running inside ComfyUI
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
