// A DOM widget that holds one of our views and makes the node tall enough for it (ComfyUI gives a DOM
// widget 50 px otherwise). Shared by the loader and the trainer; registers no extension of its own.
export function addViewWidget(node, name, type, root, contentHeight) {
  let widget;
  widget = node.addDOMWidget(name, type, root, {
    serialize: false,
    getMinHeight: () => contentHeight() + 2 * (widget?.margin ?? 10),
  });
  return widget;
}
