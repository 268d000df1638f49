"""The memory estimate that switches gradient checkpointing on is the one `benchmarks/train_memory.py` measures."""

import torch

from benchmarks.train_memory import BATCH, FAMILIES, micro_step
from perfusion_core.memory import ACTIVATIONS_GIB, use_gradient_checkpointing


def test_the_activation_estimate_is_measured_and_checkpointing_cuts_it():
    fp16 = torch.float16
    plain = micro_step(FAMILIES["sd1"], fp16, torch.float32, checkpointing=False)
    checkpointed = micro_step(FAMILIES["sd1"], fp16, torch.float32, checkpointing=True)
    per_image = plain["step"] / BATCH / 2**30
    assert abs(per_image - ACTIVATIONS_GIB["sd1"]) < 0.05 * ACTIVATIONS_GIB["sd1"], per_image
    assert checkpointed["step"] < 0.5 * plain["step"] and checkpointed["weights"] == plain["weights"]


def test_checkpointing_follows_the_setting_and_stays_off_on_a_cpu():
    cpu = torch.device("cpu")
    assert use_gradient_checkpointing(True, "sd1", 4, cpu) and not use_gradient_checkpointing(False, "sdxl", 4, cpu)
    assert not use_gradient_checkpointing(None, "sdxl", 4, cpu)
