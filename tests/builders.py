"""Small random diffusers model folders of the real SD architectures, for training tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
)

from perfusion_core.train import TEMPLATES

from .conftest import tiny_unet

WORDS = sorted({w for t in TEMPLATES for w in t.replace("{}", "").split()} | {
    "teddy", "bear", "dog", "cat", "toy", "on", "the", "beach", "in", "snow", "red", "blue", "with", "hat"})
TEXT_WIDTHS = {"sd1": [768], "sd2": [1024], "sdxl": [768, 1280]}  # each family's text encoders, CLIP-L first
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


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


def clip_tokenizer(words: list[str], max_length: int = 16) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over printable ASCII whose merges make each of `words` one token (`word</w>`)."""
    characters = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab = dict.fromkeys([*characters, *(c + "</w>" for c in characters)])
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        merged, *rest = [*word[:-1], word[-1] + "</w>"]
        for symbol in rest:
            merges[merged, symbol] = None
            merged += symbol
            vocab[merged] = None
    vocab.update(dict.fromkeys(["<|startoftext|>", "<|endoftext|>"]))
    return CLIPTokenizer(vocab={w: i for i, w in enumerate(vocab)}, merges=list(merges), model_max_length=max_length)


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
    widths = TEXT_WIDTHS[family]
    for k, width in enumerate(widths):
        suffix = "" if k == 0 else "_2"
        tokenizer.save_pretrained(root / f"tokenizer{suffix}")
        _text_encoder(tokenizer, width, projection=k == 1).save_pretrained(root / f"text_encoder{suffix}")
    DDPMScheduler(**SD_SCHEDULE, prediction_type=prediction).save_pretrained(root / "scheduler")
    if vae:
        _vae().save_pretrained(root / "vae")
    return root


def _vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=16)


def tiny_pipeline(family: str = "sd1", seed: int = 0):
    """A random-weight diffusers `StableDiffusionPipeline` (sd1, sd2) or `StableDiffusionXLPipeline` (sdxl) with
    CLIP tokenizers, 16x16 pixels; the same seed gives the same weights."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    unet = tiny_unet(family, seed)
    torch.manual_seed(seed)
    widths = TEXT_WIDTHS[family]
    tokenizers = [clip_tokenizer(WORDS) for _ in widths]
    encoders = [_text_encoder(tokenizers[k], width, projection=k == 1).eval() for k, width in enumerate(widths)]
    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    parts = dict(vae=_vae().eval(), unet=unet, scheduler=scheduler)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizers[0],
                                         tokenizer_2=tokenizers[1], **parts)
    else:
        pipe = StableDiffusionPipeline(text_encoder=encoders[0], tokenizer=tokenizers[0], safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)
