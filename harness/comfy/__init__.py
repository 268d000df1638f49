"""A real ComfyUI (`COMFYUI_PATH`) for the tests and benchmarks: its server, the graphs they run, the example
workflows."""
