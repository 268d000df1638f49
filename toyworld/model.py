"""Build, save and load the toy-world model folder (diffusers layout, pixel space, no VAE).

Folder: model_index.json, unet/ (UNet2DConditionModel, in = out = 3 channels), text_encoder/
(CLIPTextModel; its last_hidden_state, after the final layer norm, is the context), tokenizer/
(word-level over the world's vocabulary) and scheduler/ (DDPMScheduler, v-prediction).
Images are RGB scaled to [-1, 1]; `model_index.json["toyworld"]` records that, the resolution and the caption
grammar the model was trained on (`place_first`: each object's place named before it).
"""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from toyworld.world import vocabulary

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
MAX_LENGTH = 28  # the longest caption is 25 tokens with bos/eos (two textured objects)


@dataclass
class ModelConfig:
    """Sizes of the toy model; the defaults are the shipped model."""

    res: int = 16
    channels: tuple[int, ...] = (32, 64, 64)
    cross_attn: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    head_dim: int = 16
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_attention_scale: float = 0.25  # see build_text_encoder
    zero_snr: bool = True
    beta_schedule: str = "squaredcos_cap_v2"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-case word-level tokenizer: <bos> words <eos>, padded with <pad> to MAX_LENGTH."""
    vocab = {w: i for i, w in enumerate([PAD, UNK, BOS, EOS, *vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=MAX_LENGTH, padding_side="right",
    )


def build_text_encoder(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    """Small CLIP text encoder with the tokenizer's real special-token ids.

    Its self-attention output projections are scaled by `cfg.text_attention_scale`. At random initialisation
    (the toy model keeps its text encoder frozen there) attention averages every earlier token into each later
    one, so a concept word's encoding reappears in the words after it, and the gate, which measures that
    encoding, opens on them too; a smaller scale keeps each word's encoding its own.
    """
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=cfg.text_width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    encoder = CLIPTextModel(config)
    with torch.no_grad():
        for name, module in encoder.named_modules():
            if name.endswith("self_attn.out_proj"):
                module.weight.mul_(cfg.text_attention_scale)
    return encoder


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    """Plain UNet2DConditionModel on RGB pixels, cross-attention where `cfg.cross_attn` says."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attn))
    return UNet2DConditionModel(
        sample_size=cfg.res, in_channels=3, out_channels=3, down_block_types=down, up_block_types=up,
        block_out_channels=cfg.channels, layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.head_dim, norm_num_groups=8,
    )


def build_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    """Training schedule: v-prediction, optionally rescaled to zero terminal SNR."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, prediction_type="v_prediction",
        rescale_betas_zero_snr=cfg.zero_snr, clip_sample=False, timestep_spacing="trailing",
    )


@dataclass
class ToyModel:
    """The four parts of a toy-world model."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerFast
    scheduler: DDPMScheduler
    res: int
    place_first: bool = False  # its prompts name each object's place before it ("on the left a red heart ...")

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Context for `prompts`: last_hidden_state (batch x MAX_LENGTH x width)."""
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state


def build(cfg: ModelConfig | None = None, seed: int = 0) -> ToyModel:
    """Freshly initialised model (weights from `seed`)."""
    cfg = cfg or ModelConfig()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return ToyModel(build_unet(cfg), build_text_encoder(cfg, tokenizer), tokenizer, build_scheduler(cfg), cfg.res)


def init_from(model: ToyModel, folder: str | Path) -> None:
    """Start `model` from the weights of an earlier model folder, with a larger vocabulary or context.

    The UNet is copied whole. The text encoder keeps every weight of the earlier one, each known word's embedding
    row (found by the word, since ids move when words are added) and each known position; new words keep their
    fresh random rows, and new positions (only reached by the longest captions and padding) copy the last known
    one, so that the padding the UNet has learned to read looks as before.
    """
    old = load(folder)
    model.unet.load_state_dict(old.unet.state_dict())
    state = old.text_encoder.state_dict()
    fresh = model.text_encoder.state_dict()
    words, positions = "embeddings.token_embedding.weight", "embeddings.position_embedding.weight"
    rows = fresh[words].clone()
    new_ids = model.tokenizer.get_vocab()
    for word, i in old.tokenizer.get_vocab().items():
        rows[new_ids[word]] = state[words][i]
    known = state[positions].shape[0]
    state[words] = rows
    state[positions] = torch.cat([state[positions], state[positions][-1:].expand(len(fresh[positions]) - known, -1)])
    model.text_encoder.load_state_dict(state)


def save(model: ToyModel, path: str | Path, fp16: bool = True) -> None:
    """Write the diffusers-layout folder (weights as fp16 safetensors by default)."""
    path = Path(path)
    for name, module in (("unet", model.unet), ("text_encoder", model.text_encoder)):
        copy = deepcopy(module).cpu()
        (copy.half() if fp16 else copy.float()).save_pretrained(path / name, safe_serialization=True)
    model.tokenizer.save_pretrained(path / "tokenizer")
    model.scheduler.save_pretrained(path / "scheduler")
    index = {
        "_class_name": "ToyWorldPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "toyworld": {"pixel_space": True, "resolution": model.res, "value_range": [-1, 1],
                     "context": "text_encoder last_hidden_state", "place_first": model.place_first},
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def load(path: str | Path, dtype: torch.dtype = torch.float32) -> ToyModel:
    """Load a model folder written by `save`."""
    path = Path(path)
    res = json.loads((path / "model_index.json").read_text())["toyworld"]["resolution"]
    return ToyModel(
        UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype),
        CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype),
        AutoTokenizer.from_pretrained(path / "tokenizer"),
        DDPMScheduler.from_pretrained(path / "scheduler"),
        res,
        places_first(path),
    )


def places_first(path: str | Path) -> bool:
    """Whether the model folder's prompts name each object's place before it (`world.caption`'s `place_first`)."""
    return json.loads((Path(path) / "model_index.json").read_text())["toyworld"].get("place_first", False)
