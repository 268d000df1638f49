"""What the tests and the benchmarks share: random-weight models and concepts of the real SD architectures
(`models`), the builders that host interpreters run (`a1111_model`, `comfy/build_checkpoint.py`) and a ComfyUI
server with the graphs it runs (`comfy`)."""
