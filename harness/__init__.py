"""What the tests and the benchmarks share: random-weight models and concepts of the real SD architectures
(`models`), the builders that host interpreters run (`a1111_model`, `comfy/build_checkpoint.py`), a ComfyUI
server with the graphs it runs (`comfy`), an AUTOMATIC1111 server (`a1111_server`) and the one SD1.5-shaped
checkpoint that both and diffusers load (`sd15`)."""
