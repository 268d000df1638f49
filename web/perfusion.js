// Perfusion nodes in the ComfyUI front end: the loader shows the concept's preview and metadata.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addViewWidget } from "./view-widget.js";

const LOADER = "PerfusionLoadConcept";

function infoElement() {
  const root = document.createElement("div");
  root.className = "perfusion-concept-info";
  root.style.cssText = "display:flex;gap:8px;align-items:flex-start;font:12px sans-serif;color:var(--input-text,#ddd)";
  const img = document.createElement("img");
  img.style.cssText = "width:64px;height:64px;object-fit:cover;border-radius:4px;display:none";
  const text = document.createElement("div");
  text.style.cssText = "white-space:pre-line;line-height:1.4";
  root.append(img, text);
  return { root, img, text };
}

function show(view, info) {
  if (!info || info.error) {
    view.text.textContent = info?.error ?? "";
    view.img.style.display = "none";
    return;
  }
  view.text.textContent =
    `trigger: ${info.word}\nsuperclass: ${info.superclass}\nbase: ${info.family}\nsteps: ${info.steps}`;
  view.img.style.display = info.thumbnail ? "block" : "none";
  if (info.thumbnail) view.img.src = info.thumbnail;
}

function infoHeight(view) {
  return Math.max(view.img.style.display === "none" ? 0 : 64, view.text.offsetHeight);
}

async function fetchInfo(name) {
  if (!name) return null;
  const response = await api.fetchApi(`/perfusion/concept?name=${encodeURIComponent(name)}`);
  return response.json();
}

app.registerExtension({
  name: "perfusion.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== LOADER) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const view = infoElement();
      this.perfusionInfo = view;
      addViewWidget(this, "concept_info", "perfusion_info", view.root, () => infoHeight(view));
      const combo = this.widgets.find((w) => w.name === "concept_name");
      const refresh = async () => {
        show(view, await fetchInfo(combo?.value));
        app.graph?.setDirtyCanvas(true, true);
      };
      if (combo) {
        const callback = combo.callback;
        combo.callback = function () {
          const r = callback?.apply(this, arguments);
          refresh();
          return r;
        };
      }
      refresh();
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.perfusion_concept?.[0] && this.perfusionInfo) {
        show(this.perfusionInfo, message.perfusion_concept[0]);
        app.graph?.setDirtyCanvas(true, true);
      }
    };
  },
});
