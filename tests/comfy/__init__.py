"""Helpers for the tests that run against a real ComfyUI (`COMFYUI_PATH`)."""
