"""REST routes: list concepts, and train one (what the Train tab does, for scripts and tests)."""

from __future__ import annotations

from dataclasses import asdict, fields

from fastapi import FastAPI, HTTPException
from modules import shared
from modules.call_queue import queue_lock

from perfusion_core import PerfusionError

from .network import PerfusionNetwork
from .training import TrainRequest, train


def add_routes(app: FastAPI, network: PerfusionNetwork) -> None:
    library = network.library

    @app.get("/perfusion/v1/concepts")
    def concepts() -> list[dict]:
        library.refresh()
        return [{"name": f.name, "path": str(f.path), "hash": f.shorthash, "error": f.error, **f.card_metadata()}
                for f in library.files.values()]

    @app.post("/perfusion/v1/train")
    def train_concept(body: dict) -> dict:
        known = {f.name for f in fields(TrainRequest)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise HTTPException(status_code=422, detail=f"unknown fields {unknown}; known: {sorted(known)}")
        try:
            request = TrainRequest(**body)
        except TypeError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        with queue_lock:
            shared.state.begin(job="perfusion-train")
            try:
                outcome = train(request, network)
            except PerfusionError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from None
            finally:
                shared.state.end()
        return {**asdict(outcome), "path": str(outcome.path), "previews": [str(p) for p in outcome.previews]}
