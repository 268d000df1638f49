"""Small random diffusers model folders of the real SD architectures, for training tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from perfusion_core.train import TEMPLATES

from .conftest import tiny_unet

WORDS = sorted({w for t in TEMPLATES for w in t.replace("{}", "").split()} | {
    "teddy", "bear", "dog", "cat", "toy", "on", "the", "beach", "in", "snow", "red", "blue", "with", "hat"})


def word_tokenizer(words: list[str], max_length: int = 16) -> PreTrainedTokenizerFast:
    """A lower-case word-level tokenizer: <bos> words <eos>, padded to `max_length`."""
    specials = ["<pad>", "<bos>", "<unk>", "<eos>"]  # eos id 3: CLIP treats eos id 2 as a legacy config
    vocab = {w: i for i, w in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=max_length)


def _text_encoder(tokenizer, width: int, projection: bool = False):
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, projection_dim=1280)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_model_folder(root: Path, family: str = "sd1", prediction: str = "epsilon", vae: bool = True,
                       seed: int = 0) -> Path:
    """Write a random-weight diffusers model folder with the layout and context width of `family`."""
    torch.manual_seed(seed)
    unet = tiny_unet(family, seed)
    unet.save_pretrained(root / "unet")
    tokenizer = word_tokenizer(WORDS)
    widths = {"sd1": [768], "sd2": [1024], "sdxl": [768, 1280]}[family]
    for k, width in enumerate(widths):
        suffix = "" if k == 0 else "_2"
        tokenizer.save_pretrained(root / f"tokenizer{suffix}")
        _text_encoder(tokenizer, width, projection=k == 1).save_pretrained(root / f"text_encoder{suffix}")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction).save_pretrained(root / "scheduler")
    if vae:
        AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                      sample_size=16).save_pretrained(root / "vae")
    return root


def random_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)
