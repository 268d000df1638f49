"""The pack's front end (web/*.js) in a real browser: ComfyUI serves its front-end package, headless Chromium
opens the page with this pack loaded, and the tests drive it through the page's own `app` and `LiteGraph`, in
each of its renderers (RENDERERS).

Needs `COMFYUI_PATH` (and `COMFYUI_PYTHON`, as for `test_comfyui.py`), Playwright's Python package and a
Chromium: `$CHROMIUM`, or `chromium` / `chromium-browser` / `google-chrome` on `PATH`. No browser is ever
downloaded. Screenshots go to `$PERFUSION_TEST_ARTIFACTS` (default: pytest's `tmp_path`).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from harness.comfy.server import PACK_NAME, cache_dir, comfyui_trees, running_server
from perfusion_core.knobs import GATE

WAIT_MS = 300_000  # a 2-core machine shared with other jobs: the first page load can be slow


def chromium_path() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"] if Path(os.environ["CHROMIUM"]).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not comfyui_trees(),
                       reason="set COMFYUI_PATH to a ComfyUI checkout to run the browser tests"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="Playwright's Python package is missing (pip install -r requirements-dev.txt)"),
    pytest.mark.skipif(chromium_path() is None,
                       reason="no Chromium: install Debian's chromium or set CHROMIUM to a Chromium executable"),
]

LOADER, APPLY, SWEEP, TRAIN = "PerfusionLoadConcept", "PerfusionApply", "PerfusionGateSweep", "PerfusionTrain"
IMAGES = "PerfusionTrainingImages"
TITLES = {LOADER: "Load Perfusion Concept", APPLY: "Apply Perfusion", SWEEP: "Perfusion Gate Sweep",
          TRAIN: "Train Perfusion", IMAGES: "Load Perfusion Training Images"}
# The widgets of each node, in order: the inputs nodes/ declares as widgets, what the front end adds itself
# (a control after an INT named `seed`, unless the node declines it as Train does) and the DOM widgets web/*.js
# adds (the concept's preview and metadata on the loader, the loss chart and latest preview on the trainer).
FRONT_END_ADDED = {"control_after_generate", "concept_info", "training"}
WIDGETS = {
    LOADER: ["concept_name", "concept_info"],
    APPLY: ["beta", "tau", "strength", "lock", "region_weight"],
    SWEEP: ["betas", "tau", "strength", "lock"],
    TRAIN: ["word", "superclass", "name", "steps", "lr_target", "lr_embedding", "batch_size", "seed", "beta", "tau",
            "preview_every", "save_every", "resume", "caption_count", "gradient_checkpointing", "lock", "training"],
    IMAGES: ["folder", "resolution"],
}
DOM_WIDGETS = {LOADER: ("concept_info", "perfusion_info"), TRAIN: ("training", "perfusion_train")}
OUR_FILES = ("perfusion.js", "perfusion-train.js")


def png_data_url(size: int = 64, colours=((200, 40, 40), (240, 200, 40))) -> str:
    """A checked test image as a data URL (the concept's preview, a training preview)."""
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([colours[(x // 8 + y // 8) % 2] for y in range(size) for x in range(size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module", params=comfyui_trees(), ids=str)
def server(request):
    from harness.comfy.graphs import test_concept, write_concept

    with running_server(request.param, timeout=600) as s:
        layers = cache_dir() / "models" / "tiny-sd15.layers.json"
        for word, seed in (("hugsy", 0), ("wugsy", 1)):
            concept = dataclasses.replace(test_concept(layers, word, seed), thumbnail=png_data_url(),
                                          training={"steps": "400", "images": "5"})
            write_concept(s.perfusion_dir, word, concept)
        s.post("/settings/Comfy.TutorialCompleted", True)  # the default workflow, no templates dialog or tour
        s.post("/settings/Comfy.Minimap.Visible", False)  # nothing over the nodes in the screenshots
        yield s


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclasses.dataclass
class Page:
    page: object
    errors: list[dict]  # console errors and uncaught page errors, in order
    renderer: str  # a key of RENDERERS

    def ours(self) -> list[dict]:
        """The errors that come from this pack's front end: raised in our files, or naming the pack."""
        return [e for e in self.errors if any(s in json.dumps(e).lower() for s in (*OUR_FILES, PACK_NAME))]

    def assert_no_errors_from_us(self) -> None:
        ours = self.ours()
        assert not ours, "errors from our front end:\n" + "\n".join(
            f"{e['kind']}: {e['text']}\n  {e.get('url') or e.get('stack')}" for e in ours)


# The front end draws nodes on its LiteGraph canvas, or as Vue components with the setting Nodes 2.0 (front end
# 1.27.1 on); the value of Comfy.VueNodes.Enabled for each.
RENDERERS = {"litegraph": False, "vue": True}
# The app has loaded its initial (default) workflow: `window.app` is set before that load ends, and a graph loaded
# in between could be replaced by it. The workflow store has an active workflow once that load has configured the
# graph, and the workspace's spinner is off once the whole start-up is over (1.49, 1.58; 1.23 turns it off before
# the load).
APP_LOADED = ("() => window.app?.vueAppReady && app.graph && app.canvas && window.LiteGraph"
              " && app.extensionManager?.workflow?.activeWorkflow && !app.extensionManager.spinner")
# The page by CSS, only where the `app` object gives no handle (the same in every front end tested): the side bar's
# panel and the node library's search box in it, opened through the front end's command for its tab.
SIDE_BAR_PANEL = ".side-bar-panel"
NODE_SEARCH = ".side-bar-panel input"
TOGGLE_NODE_LIBRARY = "() => app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library')"


@pytest.fixture(params=list(RENDERERS))
def page(request, server, browser):
    vue = RENDERERS[request.param]
    server.post("/settings/Comfy.VueNodes.Enabled", vue)
    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    errors: list[dict] = []
    try:
        pg = context.new_page()
        pg.on("console", lambda m: errors.append({"kind": "console", "text": m.text, "url": m.location.get("url")})
              if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append({"kind": "pageerror", "text": str(e), "stack": e.stack}))
        pg.set_default_timeout(WAIT_MS)
        pg.goto(server.url + "/", timeout=WAIT_MS)
        pg.wait_for_function(APP_LOADED, timeout=WAIT_MS)
        if vue and not pg.evaluate("() => 'Comfy.VueNodes.Enabled' in app.extensionManager.setting.settings"):
            version = pg.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
            pytest.skip(f"front end {version} has no Nodes 2.0 (Comfy.VueNodes.Enabled, from 1.27.1)")
        assert pg.evaluate("() => !!LiteGraph.vueNodesMode") == vue, f"the front end does not render {request.param}"
        yield Page(pg, errors, request.param)
    finally:
        for e in errors:  # shown with a failure: the front end's own errors, for judging the filter
            print(f"browser {e['kind']}: {e['text'][:300]} ({e.get('url') or (e.get('stack') or '')[:300]})")
        context.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    path = Path(os.environ.get("PERFUSION_TEST_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(p: Page, artifacts: Path, name: str) -> Path:
    """`name`-<renderer>.png in the artifacts folder."""
    p.page.evaluate("() => app.graph.setDirtyCanvas(true, true)")
    p.page.wait_for_timeout(1000)  # a few frames: the canvas and the DOM widgets follow the graph
    path = artifacts / f"{name}-{p.renderer}.png"
    p.page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def widget_inputs(info: dict) -> list[str]:
    """The inputs of a node that the front end shows as widgets, in the order the node declares them."""
    spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info["input_order"]
    names = [*order.get("required", []), *order.get("optional", [])]
    return [n for n in names if isinstance(spec[n][0], list) or spec[n][0] in {"INT", "FLOAT", "STRING",
                                                                              "BOOLEAN", "COMBO"}]


BUILD_GRAPH = """() => {
  app.graph.clear();
  const add = (type, pos) => {
    const node = LiteGraph.createNode(type);
    if (!node) throw new Error(`LiteGraph.createNode('${type}') gave ${node}`);
    node.pos = pos;
    app.graph.add(node);
    return node;
  };
  const link = (from, slot, to, input) => from.connect(slot, to, to.findInputSlot(input));
  const ckpt = add("CheckpointLoaderSimple", [20, 40]);
  const load = add("PerfusionLoadConcept", [20, 240]);
  const apply = add("PerfusionApply", [400, 40]);
  const sweep = add("PerfusionGateSweep", [400, 40 + apply.size[1] + 100]);  // below Apply in either renderer
  const train = add("PerfusionTrain", [780, 40]);
  const images = add("PerfusionTrainingImages", [400, 40 + apply.size[1] + sweep.size[1] + 200]);
  for (const target of [apply, sweep, train]) { link(ckpt, 0, target, "model"); link(ckpt, 1, target, "clip"); }
  link(ckpt, 2, train, "vae");
  link(images, 0, train, "images");
  link(images, 1, train, "mask");
  link(load, 0, apply, "concept");
  link(load, 0, sweep, "concept");
  app.canvas.ds.scale = 0.9;
  app.canvas.ds.offset = [80, 100];  // clear of the menu bar and the side bar
  app.graph.setDirtyCanvas(true, true);
  return Object.fromEntries([load, apply, sweep, train, images].map((n) => [n.type, {
    id: n.id, title: n.title,
    widgets: (n.widgets ?? []).map((w) => ({name: w.name, type: w.type,
                                            value: typeof w.value === "object" ? null : w.value})),
  }]));
}"""

# How each DOM widget of ours sits in its node: its element in the page, what it shows, and whether its
# content fits the height the node gives it.
DOM_STATE = """([id, name]) => {
  const node = app.graph.getNodeById(id);
  const w = node.widgets.find((w) => w.name === name);
  const e = w.element, box = e.getBoundingClientRect();
  return {connected: e.isConnected, visible: box.width > 0 && box.height > 0 && getComputedStyle(e).display !== "none",
          text: e.innerText, height: w.computedHeight, scrollHeight: e.scrollHeight, clientHeight: e.clientHeight,
          images: [...e.querySelectorAll("img")].map((i) => ({shown: i.style.display !== "none",
                                                              loaded: i.complete && i.naturalWidth > 0}))};
}"""


def shown_state(p, node_id: int, name: str) -> dict:
    """DOM_STATE of a widget once the page shows it: the front end places DOM widgets as it draws the canvas."""
    p.wait_for_function(f"(args) => ({DOM_STATE})(args).visible", arg=[node_id, name], timeout=60_000)
    return p.evaluate(DOM_STATE, [node_id, name])


TRAIN_EVENTS = """([id, preview]) => {
  const send = (detail) => app.api.dispatchEvent(
    new CustomEvent("perfusion.train", {detail: {node: String(id), ...detail}}));
  const losses = Array.from({length: 60}, (_, i) => 0.05 + 0.25 * Math.exp(-i / 15) + 0.03 * Math.sin(i * 1.7));
  send({phase: "statistics", done: 32, total: 64});
  send({phase: "training", step: 60, steps: 400, loss: losses.at(-1), losses, eta: 95.4});
  send({phase: "preview", step: 60, image: preview});
  const node = app.graph.getNodeById(id);
  const canvas = node.perfusionTrain.chart;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let k = 3; k < pixels.length; k += 4) drawn += pixels[k] > 0;
  return {status: node.perfusionTrain.status.textContent, drawn};
}"""


def test_nodes_in_the_library_on_the_canvas_with_their_widgets(server, page, artifacts):
    info = server.get("/object_info")
    extensions = server.get("/extensions")
    assert {f"/extensions/{PACK_NAME}/{f}" for f in OUR_FILES} <= set(extensions), extensions
    p = page.page
    registered = p.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    assert set(TITLES) <= set(registered), [t for t in registered if "erfusion" in t]
    names = p.evaluate("() => app.extensions.map((e) => e.name)")
    assert {"perfusion.nodes", "perfusion.train"} <= set(names), names

    # the node library: search for the pack and find every node under its category
    p.evaluate(TOGGLE_NODE_LIBRARY)
    p.fill(NODE_SEARCH, "perfusion")
    p.wait_for_function("([panel, titles]) => titles.every((t) => document.querySelector(panel)?.innerText"
                        ".includes(t))", arg=[SIDE_BAR_PANEL, list(TITLES.values())], timeout=60_000)
    screenshot(page, artifacts, "perfusion-node-library")
    p.evaluate(TOGGLE_NODE_LIBRARY)

    # the nodes on a graph: every widget nodes/ declares, in order, and those web/*.js adds
    nodes = p.evaluate(BUILD_GRAPH)
    for node_type, expected in WIDGETS.items():
        assert widget_inputs(info[node_type]) == [w for w in expected if w not in FRONT_END_ADDED], node_type
        node = nodes[node_type]
        assert node["title"] == TITLES[node_type]
        assert [w["name"] for w in node["widgets"]] == expected, (node_type, node["widgets"])
    values = {t: {w["name"]: w["value"] for w in n["widgets"]} for t, n in nodes.items()}
    assert values[LOADER]["concept_name"] == "hugsy.safetensors"
    assert values[APPLY] == {"lock": "trained"} | {name: knob.default for name, knob in GATE.items()}
    assert values[TRAIN]["word"] == "hugsy" and values[TRAIN]["steps"] == 400 and values[TRAIN]["beta"] == 0.75
    for node_type, (name, kind) in DOM_WIDGETS.items():
        assert any(w["name"] == name and w["type"] == kind for w in nodes[node_type]["widgets"]), nodes[node_type]

    # the loader shows the concept's metadata and preview, read from /perfusion/concept
    loader_id, train_id = nodes[LOADER]["id"], nodes[TRAIN]["id"]
    p.wait_for_function(f"() => {{ const n = app.graph.getNodeById({loader_id}); const v = n.perfusionInfo;"
                        " return v && v.text.textContent.includes('trigger: hugsy') && v.img.complete"
                        " && v.img.naturalWidth > 0; }", timeout=60_000)
    loader = shown_state(p, loader_id, "concept_info")
    assert loader["connected"] and loader["visible"], loader
    for line in ("trigger: hugsy", "superclass: teddy", "base: sd1", "steps: 400"):
        assert line in loader["text"], loader
    assert loader["images"] == [{"shown": True, "loaded": True}], loader

    # choosing another concept shows that one
    p.evaluate(f"""() => {{ const w = app.graph.getNodeById({loader_id}).widgets.find((w) => w.name === "concept_name");
                           w.value = "wugsy.safetensors"; w.callback?.(w.value); }}""")
    p.wait_for_function(f"() => app.graph.getNodeById({loader_id}).perfusionInfo.text.textContent"
                        ".includes('trigger: wugsy')", timeout=60_000)

    # a damaged file: the loader says what is wrong instead of showing stale metadata
    choose = f"""(name) => {{
      const w = app.graph.getNodeById({loader_id}).widgets.find((w) => w.name === "concept_name");
      w.value = name; w.callback?.(w.value); }}"""
    hugsy = (server.perfusion_dir / "hugsy.safetensors").read_bytes()
    broken = server.perfusion_dir / "broken.safetensors"
    broken.write_bytes(hugsy[: len(hugsy) // 2])
    try:  # gone before the next page: it would come first in the loader's list there
        p.evaluate(choose, broken.name)
        p.wait_for_function(f"() => app.graph.getNodeById({loader_id}).perfusionInfo.text.textContent"
                            ".includes('broken.safetensors is not a valid safetensors file')", timeout=60_000)
    finally:
        broken.unlink()
    assert not p.evaluate(DOM_STATE, [loader_id, "concept_info"])["images"][0]["shown"]
    p.evaluate(choose, "wugsy.safetensors")
    p.wait_for_function(f"() => app.graph.getNodeById({loader_id}).perfusionInfo.text.textContent"
                        ".includes('trigger: wugsy')", timeout=60_000)

    # the trainer's view follows the perfusion.train messages: status line, loss chart, latest preview
    trainer = shown_state(p, train_id, "training")
    assert trainer["connected"] and trainer["visible"] and trainer["text"].strip() == "not started", trainer
    shown = p.evaluate(TRAIN_EVENTS, [train_id, png_data_url(64, ((40, 120, 220), (240, 240, 240)))])
    assert shown["status"].startswith("step 60/400  loss 0.") and shown["status"].endswith("~95 s left"), shown
    assert shown["drawn"] > 200, shown  # the loss curve and its running mean are on the chart
    p.wait_for_function(f"() => {{ const i = app.graph.getNodeById({train_id}).perfusionTrain.preview;"
                        " return i.style.display === 'block' && i.complete && i.naturalWidth > 0; }", timeout=60_000)

    path = screenshot(page, artifacts, "perfusion-nodes")
    assert path.stat().st_size > 10_000

    # both DOM widgets are in the page and their content fits the space their node gives them
    for node_id, name in ((loader_id, "concept_info"), (train_id, "training")):
        state = shown_state(p, node_id, name)
        assert state["connected"] and state["visible"], state
        assert state["scrollHeight"] <= state["clientHeight"] + 2, (name, state)

    page.assert_no_errors_from_us()


LISTEN = """() => {
  window.perfusionSeen = [];
  for (const type of ["b_preview", "b_preview_with_metadata", "perfusion.train"]) {
    app.api.addEventListener(type, ({detail}) => window.perfusionSeen.push({
      type, node: detail?.nodeId ?? detail?.node ?? null, phase: detail?.phase ?? null,
      bytes: (detail?.blob ?? detail)?.size ?? null, mime: (detail?.blob ?? detail)?.type ?? null}));
  }
  return app.api.clientId;
}"""


def test_training_shows_live_previews_through_comfyuis_own_preview(server, page):
    """A real Train Perfusion run queued for this page: each preview reaches it as ComfyUI's own node preview
    (the binary preview messages KSampler's previews use) as well as in the node's perfusion.train messages."""
    from harness.comfy.graphs import train_graph, training_folder

    images = training_folder(server.base / "input")
    p = page.page
    client_id = p.evaluate(LISTEN)
    # a name per renderer: ComfyUI would answer the same graph again from its cache, without running it
    graph = train_graph(images, f"live-{page.renderer}", steps=2, preview_every=1)
    server.wait(server.submit(graph, client_id=client_id))
    p.wait_for_function("() => window.perfusionSeen.filter((e) => e.type === 'b_preview').length >= 2",
                        timeout=60_000)
    seen = p.evaluate("() => window.perfusionSeen")
    previews = [e for e in seen if e["type"] == "b_preview"]
    assert len(previews) == 2 and all(e["mime"] == "image/jpeg" and e["bytes"] > 300 for e in previews), seen
    assert all(e["node"] == "train" for e in seen if e["type"] == "b_preview_with_metadata"), seen
    assert [e["phase"] for e in seen if e["type"] == "perfusion.train"].count("preview") == 2, seen
    page.assert_no_errors_from_us()


@pytest.mark.parametrize("name", [
    "train-one-concept",
    "apply-with-gate-sweep",
    "two-concepts-one-image",
    "paint-two-concepts",
])
def test_example_workflow_opens_and_queues_what_it_was_built_from(server, page, artifacts, name):
    """The UI-format file, opened by the real front end, turns back into the API graph it was written from."""
    from harness.comfy.workflows import EXAMPLES, example_graphs

    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    p = page.page
    result = p.evaluate("""async (workflow) => {
      await app.loadGraphData(workflow);
      const missing = app.graph._nodes.filter((n) => !(n.type in LiteGraph.registered_node_types)).map((n) => n.type);
      const {output} = await app.graphToPrompt();
      return {missing, output};
    }""", workflow)
    screenshot(page, artifacts, f"perfusion-example-{name}")
    assert result["missing"] == []
    graph = example_graphs()[name]
    ids = {key: str(k + 1) for k, key in enumerate(graph)}
    expected = {ids[key]: {"class_type": node["class_type"],
                           "inputs": {k: [ids[v[0]], v[1]] if isinstance(v, list) else v
                                      for k, v in node["inputs"].items()}}
                for key, node in graph.items()}
    output = result["output"]
    assert {i: n["class_type"] for i, n in output.items()} == {i: n["class_type"] for i, n in expected.items()}
    wrong = {f"{node['class_type']} #{i} {k}": {"queued": output[i]["inputs"].get(k), "built": v}
             for i, node in expected.items() for k, v in node["inputs"].items() if output[i]["inputs"].get(k) != v}
    assert not wrong, f"the front end queues other inputs than {name}.json was built from: {wrong}"
    page.assert_no_errors_from_us()
