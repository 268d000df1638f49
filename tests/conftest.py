"""Shared fixtures: small random UNets of the real SD architectures, and random concepts for them (`harness.models`,
which the benchmarks use too)."""

from __future__ import annotations

import pytest

from harness.models import random_concept, random_spd, tiny_unet, unet_inputs
from perfusion_core import cross_attention_layers

__all__ = ["SD1_ATTN2", "random_concept", "random_spd", "tiny_unet", "unet_inputs"]

SD1_ATTN2 = [
    *(f"input_blocks.{i}.1.transformer_blocks.0.attn2" for i in (1, 2, 4, 5, 7, 8)),
    *(f"output_blocks.{i}.1.transformer_blocks.0.attn2" for i in range(3, 12)),
    "middle_block.1.transformer_blocks.0.attn2",
]


@pytest.fixture(scope="session")
def sd1_unet():
    return tiny_unet("sd1")


@pytest.fixture(scope="session")
def sd1_layers(sd1_unet):
    return cross_attention_layers(sd1_unet)
