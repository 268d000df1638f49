// Train Perfusion in the ComfyUI front end: a live loss chart and the latest preview while it trains.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addViewWidget } from "./view-widget.js";

const TRAINER = "PerfusionTrain";
const EVENT = "perfusion.train";

function trainView() {
  const root = document.createElement("div");
  root.className = "perfusion-train-view";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;font:12px sans-serif;color:var(--input-text,#ddd)";
  const status = document.createElement("div");
  status.textContent = "not started";
  const chart = document.createElement("canvas");
  chart.width = 320;
  chart.height = 120;
  chart.style.cssText = "width:100%;height:120px;background:rgba(0,0,0,0.25);border-radius:4px";
  const preview = document.createElement("img");
  preview.style.cssText = "width:100%;object-fit:contain;display:none;border-radius:4px";
  preview.addEventListener("load", () => app.graph?.setDirtyCanvas(true, true));
  root.append(status, chart, preview);
  return { root, status, chart, preview };
}

// The height the view needs: the status line, the chart and, once there is one, the preview at full width.
function viewHeight(view) {
  let height = (view.status.offsetHeight || 16) + 4 + 120;
  const { preview } = view;
  if (preview.style.display !== "none" && preview.naturalWidth) {
    height += 4 + (view.root.clientWidth * preview.naturalHeight) / preview.naturalWidth;
  }
  return height;
}

function drawLoss(canvas, losses) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!losses || losses.length < 2) return;
  const lo = Math.min(...losses);
  const span = Math.max(...losses) - lo || 1;
  const x = (i) => 4 + (i / (losses.length - 1)) * (canvas.width - 8);
  const y = (v) => canvas.height - 4 - ((v - lo) / span) * (canvas.height - 8);
  const line = (values, colour, offset) => {
    ctx.strokeStyle = colour;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i + offset), y(v)) : ctx.moveTo(x(i + offset), y(v))));
    ctx.stroke();
  };
  line(losses, "rgba(140,170,240,0.6)", 0);
  const k = Math.min(10, losses.length);
  const mean = losses.slice(k - 1).map((_, i) => losses.slice(i, i + k).reduce((a, b) => a + b, 0) / k);
  line(mean, "#4a7bea", k - 1);
}

function update(view, detail) {
  if (detail.phase === "statistics") {
    view.status.textContent = `text-encoder statistics: ${detail.done}/${detail.total} captions`;
  } else if (detail.phase === "preview") {
    view.preview.src = detail.image;
    view.preview.style.display = "block";
  } else {
    const loss = detail.loss === undefined ? "" : `  loss ${detail.loss.toFixed(4)}`;
    const eta = detail.eta === undefined ? "" : `  ~${Math.round(detail.eta)} s left`;
    view.status.textContent = `step ${detail.step}/${detail.steps}${loss}${eta}`;
    drawLoss(view.chart, detail.losses);
  }
}

app.registerExtension({
  name: "perfusion.train",
  async setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
      if (node?.perfusionTrain) update(node.perfusionTrain, detail);
      app.graph?.setDirtyCanvas(true, false);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TRAINER) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const view = trainView();
      this.perfusionTrain = view;
      addViewWidget(this, "training", "perfusion_train", view.root, () => viewHeight(view)); // grows with the preview
      return result;
    };
  },
});
