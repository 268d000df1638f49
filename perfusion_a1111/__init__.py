"""AUTOMATIC1111 / Forge / reForge glue for perfusion_core.

`tags`, `library` and `paste` are plain Python (no web UI import) and are tested directly; every other
module imports the web UI's `modules` package and is only imported by `scripts/perfusion.py`.
"""
