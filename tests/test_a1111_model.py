"""Tiny random-weight SD1-architecture checkpoints for the AUTOMATIC1111 acceptance tests.

Run with A1111's own interpreter, from its root, so `ldm` and `open_clip` import:

    A1111_PYTHON tests/test_a1111_model.py OUT_DIR NAME CONTEXT_DIM SEED [--concept FILE]...

writes `OUT_DIR/NAME.safetensors` with `NAME.yaml` beside it (A1111 prefers that config) and a local CLIP
tokenizer folder, all without network access. Each `--concept FILE` (`WORD.safetensors`) also gets a
random concept that fits the model. This module holds no tests; the acceptance tests import nothing from it.

CONTEXT_DIM 2048 gives SDXL: `sd_xl_base.yaml` with a small UNet (context 2048, the pooled and size vectors of
2816), a two-layer CLIP-L and the full OpenCLIP ViT-bigG-14 text tower (open_clip knows the architecture only
by that name), random weights.

Forge (run from its root: `backend/loader.py` is there) recognises a checkpoint only by its UNet's shape and
builds the text encoder and VAE from the configs it ships, so there CONTEXT_DIM must be 768 (SD1) or 1024
(SD2): the UNet is small (two levels, 320 channels), the text encoder and VAE are full size, all with
Forge's own classes.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from types import SimpleNamespace

TEXT_WIDTH_HEADS = 2


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte-to-character map (the same table its BPE vocabulary is built on)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_tokenizer(folder: Path, context_dim: int) -> None:
    """A Hugging Face CLIP tokenizer and a tiny text-encoder config, from open_clip's shipped BPE merges."""
    import open_clip.tokenizer

    text = gzip.decompress(Path(open_clip.tokenizer.default_bpe()).read_bytes()).decode("utf-8")
    merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": len(vocab),
        "hidden_size": context_dim, "intermediate_size": 2 * context_dim, "num_hidden_layers": 2,
        "num_attention_heads": TEXT_WIDTH_HEADS, "max_position_embeddings": 77, "projection_dim": context_dim,
        "hidden_act": "quick_gelu", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
    }))


def write_config(path: Path, tokenizer: Path, context_dim: int) -> None:
    """`configs/v1-inference.yaml` scaled down: two UNet levels, 32 channels, a 32-channel VAE."""
    from omegaconf import OmegaConf

    config = OmegaConf.load("configs/v1-inference.yaml")
    params = config.model.params
    params.unet_config.params.update(model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                                     attention_resolutions=[1, 2], context_dim=context_dim)
    params.unet_config.params.pop("num_heads")
    params.unet_config.params.num_head_channels = 16
    params.first_stage_config.params.ddconfig.update(ch=32, num_res_blocks=1)
    params.cond_stage_config.params = {"version": str(tokenizer)}
    OmegaConf.save(config, path)


def write_sdxl_config(path: Path, tokenizer: Path) -> None:
    """`sd_xl_base.yaml` with a two-level 32-channel UNet, the tiny CLIP-L at `tokenizer` and a 32-channel VAE."""
    from omegaconf import OmegaConf

    config = OmegaConf.load("repositories/generative-models/configs/inference/sd_xl_base.yaml")
    params = config.model.params
    params.network_config.params.update(model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                                        attention_resolutions=[1, 2], transformer_depth=[1, 1], num_head_channels=16,
                                        spatial_transformer_attn_type="softmax")
    params.conditioner_config.params.emb_models[0].params.update(version=str(tokenizer), layer_idx=1)
    params.first_stage_config.params.ddconfig.update(ch=32, num_res_blocks=1, attn_type="vanilla")
    OmegaConf.save(config, path)


def build_model(path: Path, seed: int):
    """Instantiate the config at `path.yaml` with random weights (no all-zero tensor left) and save it."""
    import open_clip
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    config = OmegaConf.load(path.with_suffix(".yaml"))
    if config.model.target.startswith("sgm."):
        from sgm.util import instantiate_from_config
    else:
        from ldm.util import instantiate_from_config
    CLIPTextModel.from_pretrained = classmethod(lambda cls, name, *a, **k: cls(CLIPTextConfig.from_pretrained(name)))
    create = open_clip.create_model_and_transforms
    open_clip.create_model_and_transforms = lambda *a, pretrained=None, **k: create(*a, pretrained=None, **k)
    torch.manual_seed(seed)
    model = instantiate_from_config(config.model)
    state = {}
    for key, t in model.state_dict().items():
        if key.startswith(("model.", "cond_stage_model.", "conditioner.")) and t.is_floating_point() and not t.any():
            # zero-initialised output layers would give zero gradients, and zero layer-norm biases a
            # context of mean exactly 0, which A1111's emphasis normalisation divides by
            t = torch.randn(t.shape) * 0.02
        state[key] = t.detach().contiguous()
    save_file(state, path.with_suffix(".safetensors"))
    return model


SUPERCLASSES = ("toy", "dog")  # by seed: two concepts with one i* could not be combined (singular projector)


def write_concept(model, word: str, out: Path, seed: int) -> None:
    """A random concept for `model` whose `i*` is its superclass's encoding in a short prompt. For SDXL the
    word's embeddings are the superclass's own, so the word's encoding is `i*` and its gate opens."""
    import open_clip
    import torch

    from perfusion_core import Concept, cross_attention_layers, save_concept
    from perfusion_core.concept import family_for_width

    layers = cross_attention_layers(model.model.diffusion_model)
    width = layers[0].context_dim
    g = torch.Generator().manual_seed(seed)
    superclass = SUPERCLASSES[(seed - 1) % len(SUPERCLASSES)]
    prompt = f"a photo of a {superclass}"
    with torch.no_grad():
        if hasattr(model, "conditioner"):  # SDXL: CLIP-L's configured layer beside OpenCLIP's penultimate
            clip_l, clip_g = model.conditioner.embedders[:2]
            clip_l.device = clip_g.device = "cpu"  # sgm's embedders default to CUDA
            context = torch.cat([clip_l([prompt]), clip_g([prompt])[0]], dim=-1)[0]
            token_l = clip_l.tokenizer(superclass, add_special_tokens=False).input_ids[0]
            token_g = int(open_clip.tokenize([superclass])[0, 1])
            embeddings = [clip_l.transformer.get_input_embeddings().weight[token_l].clone(),
                          clip_g.model.token_embedding.weight[token_g].clone()]
            encoder_layer = "penultimate"
        else:
            encoder = model.cond_stage_model
            ids = encoder.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt")
            context = encoder.transformer(input_ids=ids.input_ids).last_hidden_state[0]
            embeddings, encoder_layer = [torch.randn(width, generator=g) * 0.3], "last"
    i_star = context[5].double()  # the superclass (after <bos> a photo of a)
    c_inv = torch.linalg.inv((context.double().T @ context.double()) / context.shape[0]
                             + 1e-2 * torch.eye(width, dtype=torch.float64))
    concept = Concept(
        word=word, superclass=superclass, family=family_for_width(width), context_dim=width,
        text_encoder_layer=encoder_layer, i_star=i_star.float(), v=(c_inv @ i_star).float(),
        i_super=i_star.float(), embeddings=embeddings,
        o_v={layer.name: torch.randn(layer.v_dim, generator=g) * 3 for layer in layers},
        c_fingerprint="0" * 16, description=f"A random test concept for {out.stem}",
    )
    save_concept(concept, out)


FORGE_REPOS = {768: "runwayml/stable-diffusion-v1-5", 1024: "stabilityai/stable-diffusion-2-1"}


def build_forge_model(path: Path, context_dim: int, seed: int):
    """A checkpoint Forge detects as SD1 (context 768) or SD2 (1024); returns (unet, text model, tokenizer)."""
    import torch
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    repo = Path("backend/huggingface") / FORGE_REPOS[context_dim]
    sd2 = context_dim == 1024
    torch.manual_seed(seed)
    unet = IntegratedUNet2DConditionModel(
        in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
        num_heads=-1 if sd2 else 8, num_head_channels=64 if sd2 else -1, use_spatial_transformer=True,
        transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
        context_dim=context_dim, use_linear_in_transformer=sd2)
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(repo / "text_encoder"))
    vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(repo / "vae"))
    parts = [("model.diffusion_model.", unet), ("first_stage_model.", vae),
             ("cond_stage_model.model.transformer." if sd2 else "cond_stage_model.transformer.", text)]
    state = {}
    for prefix, module in parts:
        for key, t in module.state_dict().items():
            if module is not vae and t.is_floating_point() and not t.any():  # as in build_model
                t = torch.randn(t.shape) * 0.02
            state[prefix + key] = t.detach().half().contiguous()
    save_file(state, path.with_suffix(".safetensors"))
    return unet, text, CLIPTokenizer.from_pretrained(repo / "tokenizer")


def write_forge_concept(unet, text, tokenizer, word: str, out: Path, seed: int) -> None:
    """As `write_concept`, for a model from `build_forge_model`."""
    model = SimpleNamespace(model=SimpleNamespace(diffusion_model=unet),
                            cond_stage_model=SimpleNamespace(tokenizer=tokenizer, transformer=text))
    write_concept(model, word, out, seed)


def main(argv: list[str]) -> None:
    out, name, context_dim, seed = Path(argv[0]).resolve(), argv[1], int(argv[2]), int(argv[3])
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # perfusion_core, for --concept
    concepts = [Path(argv[k + 1]).resolve() for k, a in enumerate(argv) if a == "--concept"]
    if Path("backend/loader.py").is_file():  # Forge
        sys.path[:0] = [".", "packages_3rdparty"]
        sys.argv[1:] = ["--always-cpu"]  # Forge's backend reads its flags when imported
        out.mkdir(parents=True, exist_ok=True)
        unet, text, tokenizer = build_forge_model(out / name, context_dim, seed)
        for seed, concept in enumerate(concepts, start=1):
            write_forge_concept(unet, text, tokenizer, concept.stem, concept, seed)
        return
    sys.path[:0] = ["repositories/stable-diffusion-stability-ai", "repositories/generative-models"]
    tokenizer = out / f"{name}-tokenizer"
    if context_dim == 2048:
        write_tokenizer(tokenizer, 768)
        write_sdxl_config(out / f"{name}.yaml", tokenizer)
    else:
        write_tokenizer(tokenizer, context_dim)
        write_config(out / f"{name}.yaml", tokenizer, context_dim)
    model = build_model(out / name, seed)
    for seed, concept in enumerate(concepts, start=1):
        write_concept(model, concept.stem, concept, seed)


if __name__ == "__main__":
    main(sys.argv[1:])
