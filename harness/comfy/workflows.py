"""The pack's example workflows: UI-format graphs built from API-format ones, and converted back to run them.

`python -m harness.comfy.workflows` (with COMFYUI_PATH set) writes `example_workflows/*.json`; the tests run each
one on the test checkpoint. Their `.jpg` thumbnails come from the toy model (`python -m toyworld.thumbnails`).
"""

from __future__ import annotations

import json
from pathlib import Path

from perfusion_core.captions import load_captions

from .graphs import CHECKPOINT, TRAINING_FOLDER, sample_graph, sweep_graph, train_graph

EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"
EXAMPLE_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(info: dict) -> list[tuple[str, list]]:
    spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info.get("input_order", {})
    return [(name, spec[name]) for name in [*order.get("required", []), *order.get("optional", [])]]


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _extra_values(name: str, spec: list) -> list:
    """Widget values the front end stores after this input's own: a 'control after generate' (asked for, or
    by the front end's legacy rule for an INT named seed / noise_seed), an image upload button's."""
    options = spec[1] if len(spec) > 1 else {}
    control = options.get("control_after_generate")
    if control is None:
        control = spec[0] == "INT" and name in ("seed", "noise_seed")
    return ["fixed"] * bool(control) + ["image"] * bool(options.get("image_upload"))


def to_ui(graph: dict, object_info: dict) -> dict:
    """An API-format graph as a UI-format workflow (nodes in columns by depth, links, widget values)."""
    ids = {key: k + 1 for k, key in enumerate(graph)}
    depth: dict[str, int] = {}

    def level(key: str) -> int:
        if key not in depth:
            sources = [v[0] for v in graph[key]["inputs"].values() if isinstance(v, list)]
            depth[key] = 1 + max((level(s) for s in sources), default=-1)
        return depth[key]

    links, nodes, rows = [], [], {}
    outgoing: dict[tuple[str, int], list[int]] = {}
    for key, node in graph.items():
        info = object_info[node["class_type"]]
        inputs, values = [], []
        for name, spec in _inputs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list) and not _is_widget(spec):
                link_id = len(links) + 1
                source, slot = value
                links.append([link_id, ids[source], slot, ids[key], len(inputs), spec[0]])
                outgoing.setdefault((source, slot), []).append(link_id)
                inputs.append({"name": name, "type": spec[0], "link": link_id})
            elif _is_widget(spec):
                values.append(value if value is not None else spec[1].get("default") if len(spec) > 1 else None)
                values.extend(_extra_values(name, spec))
            else:
                inputs.append({"name": name, "type": spec[0], "link": None})
        column = level(key)
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes.append({"id": ids[key], "type": node["class_type"], "pos": [40 + 380 * column, 40 + 320 * row],
                      "size": [340, 260], "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
                      "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": values, "title": info["display_name"]})
    for node, key in zip(nodes, graph, strict=True):
        info = object_info[graph[key]["class_type"]]
        node["outputs"] = [{"name": name, "type": kind, "links": outgoing.get((key, slot), [])}
                           for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True))]
    order = sorted(graph, key=level)
    for node, key in zip(nodes, graph, strict=True):
        node["order"] = order.index(key)
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def to_api(workflow: dict, object_info: dict) -> dict:
    """A UI-format workflow as the API-format graph that the front end would queue."""
    sources = {link[0]: (str(link[1]), link[2]) for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        info = object_info[node["type"]]
        linked = {i["name"]: list(sources[i["link"]]) for i in node["inputs"] if i.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for name, spec in _inputs(info):
            if _is_widget(spec):
                inputs[name] = next(values)
                for _ in _extra_values(name, spec):
                    next(values)
            if name in linked:
                inputs[name] = linked[name]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


def example_graphs() -> dict[str, dict]:
    """The API-format graphs behind each example workflow, on the usual SD1.5 checkpoint name."""
    train = train_graph("my-concept", "my-concept", steps=400, preview_every=50, save_every=50,
                        caption_count=len(load_captions()), checkpoint=EXAMPLE_CHECKPOINT, resolution=512)
    sweep = sweep_graph("0.5, 0.6, 0.7, 0.8", "gate-sweep", prompt="a photo of hugsy on the beach", steps=20,
                        size=512, checkpoint=EXAMPLE_CHECKPOINT)
    two = sample_graph(prompt="a photo of hugsy and wugsy in a garden", steps=20, size=512,
                       concepts=({"name": "hugsy.safetensors"}, {"name": "wugsy.safetensors"}),
                       checkpoint=EXAMPLE_CHECKPOINT)
    two["save"]["inputs"]["filename_prefix"] = "two-concepts"
    painted = sample_graph(prompt="a photo of hugsy and wugsy in a garden", steps=20, size=512,
                           concepts=({"name": "hugsy.safetensors", "region": "left"},
                                     {"name": "wugsy.safetensors", "region": "right"}),
                           checkpoint=EXAMPLE_CHECKPOINT)
    painted["save"]["inputs"]["filename_prefix"] = "paint-two-concepts"
    return {"train-one-concept": train, "apply-with-gate-sweep": sweep, "two-concepts-one-image": two,
            "paint-two-concepts": painted}


def for_test(graph: dict) -> dict:
    """An example graph on the test checkpoint, small and short enough for a CPU."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        inputs = node["inputs"]
        if inputs.get("ckpt_name") == EXAMPLE_CHECKPOINT:
            inputs["ckpt_name"] = CHECKPOINT
        if node["class_type"] == "PerfusionTrainingImages":
            inputs.update(folder=TRAINING_FOLDER, resolution=64)
        if node["class_type"] == "PerfusionTrain":
            inputs.update(steps=2, preview_every=2, save_every=0, caption_count=64, name="example-run")
        if node["class_type"] == "KSampler":
            inputs["steps"] = 4
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
    return graph


def _write_examples() -> None:
    """Write the workflows in the UI format of the ComfyUI at COMFYUI_PATH (thumbnails: `toyworld.thumbnails`)."""
    from .server import comfyui_tree, running_server

    EXAMPLES.mkdir(exist_ok=True)
    with running_server(comfyui_tree()) as server:
        info = server.get("/object_info")
        for name, graph in example_graphs().items():
            (EXAMPLES / f"{name}.json").write_text(json.dumps(to_ui(graph, info), indent=1) + "\n")


if __name__ == "__main__":
    _write_examples()
