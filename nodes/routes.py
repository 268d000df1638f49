"""HTTP route the front end reads a concept's metadata from (before the graph runs)."""

from __future__ import annotations

from aiohttp import web
from server import PromptServer

from ..perfusion_core import PerfusionError
from .concepts import describe, read_concept


def register_routes() -> None:
    @PromptServer.instance.routes.get("/perfusion/concept")
    async def concept_info(request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        try:
            return web.json_response(describe(read_concept(name), name))
        except PerfusionError as e:  # a missing or damaged file is an answer the loader shows, not a failed request
            return web.json_response({"error": str(e)})
