"""Small random models and concepts of the real SD architectures: SD1.5-, SD2- and SDXL-shaped diffusers UNets
and concepts with random targets that fit them."""

from __future__ import annotations

import torch

from perfusion_core import Concept
from perfusion_core.concept import family_for_width


def tiny_unet(family: str = "sd1", seed: int = 0):
    """A small random diffusers UNet with the layer layout and context width of SD1.5, SD2 or SDXL."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    common = dict(sample_size=8, norm_num_groups=8, layers_per_block=2)
    if family == "sd1":
        unet = UNet2DConditionModel(block_out_channels=(16, 16, 32, 32), cross_attention_dim=768,
                                    attention_head_dim=8, **common)
    elif family == "sd2":
        unet = UNet2DConditionModel(block_out_channels=(16, 16, 32, 32), cross_attention_dim=1024,
                                    attention_head_dim=(2, 2, 4, 4), use_linear_projection=True, **common)
    elif family == "sdxl":
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 3), cross_attention_dim=2048, attention_head_dim=(2, 4, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 1280, **common,
        )
    else:
        raise ValueError(family)
    return unet.eval().requires_grad_(False)


def unet_inputs(unet, batch: int = 2, tokens: int = 77, seed: int = 1) -> dict:
    """Random inputs for one forward of `unet` (SDXL's added conditions included)."""
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    kwargs = dict(
        sample=torch.randn(batch, unet.config.in_channels, size, size, generator=g),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=g),
    )
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280, generator=g),
                                       "time_ids": torch.randn(batch, 6, generator=g)}
    return kwargs


def random_spd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def random_concept(layers, word: str = "hugsy", seed: int = 0, c_inv: torch.Tensor | None = None,
                   i_star: torch.Tensor | None = None) -> Concept:
    """A concept with random targets that fits `layers`, with `v = C⁻¹ i*` for a random or given C."""
    g = torch.Generator().manual_seed(seed)
    d = layers[0].context_dim
    c_inv = c_inv if c_inv is not None else torch.linalg.inv(random_spd(d, g))
    i_star = i_star if i_star is not None else torch.randn(d, generator=g)
    return Concept(
        word=word, superclass="teddy", family=family_for_width(d), context_dim=d, text_encoder_layer="last",
        i_star=i_star.float(), v=(c_inv @ i_star.double()).float(), i_super=torch.randn(d, generator=g),
        embeddings=[torch.randn(min(d, 1280), generator=g) * 0.01],
        o_v={layer.name: torch.randn(layer.v_dim, generator=g) for layer in layers},
        c_fingerprint="0" * 16, training={"beta": "0.75", "tau": "0.1", "steps": "400", "images": "5", "seed": "0"},
    )
