"""Random-weight checkpoints and concepts for the AUTOMATIC1111 and Forge acceptance tests.

Run with A1111's own interpreter, from its root, so `ldm` and `open_clip` import:

    A1111_PYTHON harness/a1111_model.py OUT_DIR NAME CONTEXT_DIM SEED [--concept FILE]...

writes `OUT_DIR/NAME.safetensors` with `NAME.yaml` beside it (A1111 prefers that config) and a local CLIP
tokenizer folder, all without network access. Each `--concept FILE` (`WORD.safetensors`) also gets a
random concept that fits the model. The acceptance tests import nothing from it.

In A1111 CONTEXT_DIM 2048 gives SDXL: `sd_xl_base.yaml` with a small UNet (context 2048, the pooled and size
vectors of 2816), a two-layer CLIP-L and the full OpenCLIP ViT-bigG-14 text tower (open_clip knows the
architecture only by that name), random weights; 768 an SD1.5-shaped model that ComfyUI and diffusers load too
(`write_sd15_config`: the small UNet of `SMALL_UNET`, full-size CLIP-L from the local Hugging Face cache and VAE);
any other (64, 96) a tiny SD1-architecture model.

Forge (run from its root: `backend/loader.py` is there) recognises a checkpoint only by its UNet's shape and
builds the text encoders and VAE from the configs it ships, so there CONTEXT_DIM must be 768 (SD1), 1024 (SD2)
or 2048 (SDXL), all with Forge's own classes and full-size text encoders and VAE. The SD1 and SD2 UNets are
small (two levels, 320 channels); SDXL's is full size (2.6 B parameters, `SDXL_UNET`), built on the meta device
and drawn tensor by tensor as the file is written (5 GB in fp16). `SDXL_UNET` and `random_unet_tensor` are
also what harness/comfy/build_checkpoint.py builds ComfyUI's SDXL test UNet from.

reForge (`ldm_patched/` in its root) also detects a checkpoint by its UNet's shape: there CONTEXT_DIM is 768,
1024 or 2048, the UNet comes from A1111's config, written beside the checkpoint (small for SD1 and SD2, full size for
SDXL), with full-size text encoders and VAE (`build_reforge_model`).
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TEXT_WIDTH_HEADS = 2
# the full-size SDXL UNet, as arguments of ComfyUI's UNetModel and of Forge's copy of it
SDXL_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "num_head_channels": 64, "use_spatial_transformer": True, "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10, "context_dim": 2048,
    "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
}


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


SMALL_UNET = {"model_channels": 320, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [1, 2]}
"""A small UNet of A1111's configs that ComfyUI's detection (ComfyUI, reForge) still takes for SD1 or SD2 (320
channels): two levels, both with cross-attention."""


def write_sd15_config(path: Path) -> None:
    """`configs/v1-inference.yaml` with the `SMALL_UNET`: its CLIP-L (`openai/clip-vit-large-patch14`, whose
    tokenizer and config A1111 reads from the Hugging Face cache) and VAE stay full size, as ComfyUI expects."""
    from omegaconf import OmegaConf

    config = OmegaConf.load("configs/v1-inference.yaml")
    config.model.params.unet_config.params.update(SMALL_UNET)
    OmegaConf.save(config, path)


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


def _superclass(seed: int) -> tuple[str, str]:
    """The superclass of the concept with `seed`, and a prompt whose token 5 it is (after <bos> a photo of a)."""
    superclass = SUPERCLASSES[(seed - 1) % len(SUPERCLASSES)]
    return superclass, f"a photo of a {superclass}"


def _save_concept(unet, word: str, out: Path, seed: int, context: torch.Tensor,
                  embeddings: list[torch.Tensor] | None, encoder_layer: str) -> None:
    """A concept for `unet` whose `i*` is token 5 of `context` (the superclass prompt's encoding), with random
    value targets; its word embeddings are `embeddings` moved a little (the word's encoding stays near `i*`, so its
    gate opens, but is not the superclass's, so global locking changes what K reads), or without them random."""
    import torch

    from perfusion_core import Concept, cross_attention_layers, save_concept
    from perfusion_core.concept import family_for_width

    layers = cross_attention_layers(unet)
    width = layers[0].context_dim
    g = torch.Generator().manual_seed(seed)
    if embeddings is None:
        embeddings = [torch.randn(width, generator=g) * 0.3]
    else:
        embeddings = [e + 0.2 * e.std() * torch.randn(e.shape, generator=g) for e in embeddings]
    i_star = context[5].double()
    c_inv = torch.linalg.inv((context.double().T @ context.double()) / context.shape[0]
                             + 1e-2 * torch.eye(width, dtype=torch.float64))
    concept = Concept(
        word=word, superclass=_superclass(seed)[0], family=family_for_width(width), context_dim=width,
        text_encoder_layer=encoder_layer, i_star=i_star.float(), v=(c_inv @ i_star).float(),
        i_super=i_star.float(), embeddings=embeddings,
        o_v={layer.name: torch.randn(layer.v_dim, generator=g) * 3 for layer in layers},
        c_fingerprint="0" * 16, description=f"A random test concept for {out.stem}",
    )
    save_concept(concept, out)


def write_concept(model, word: str, out: Path, seed: int) -> None:
    """A random concept for A1111's `model` whose `i*` is its superclass's encoding in a short prompt. For SDXL
    the word's embeddings are near the superclass's own, so the word's encoding is near `i*` and its gate opens."""
    import open_clip
    import torch

    if not hasattr(model, "conditioner"):
        encoder = model.cond_stage_model
        write_clip_concept(model.model.diffusion_model, [(encoder.transformer, encoder.tokenizer)], word, out, seed)
        return
    superclass, prompt = _superclass(seed)
    with torch.no_grad():  # SDXL: CLIP-L's configured layer beside OpenCLIP's penultimate
        clip_l, clip_g = model.conditioner.embedders[:2]
        clip_l.device = clip_g.device = "cpu"  # sgm's embedders default to CUDA
        context = torch.cat([clip_l([prompt]), clip_g([prompt])[0]], dim=-1)[0]
        token_l = clip_l.tokenizer(superclass, add_special_tokens=False).input_ids[0]
        token_g = int(open_clip.tokenize([superclass])[0, 1])
        embeddings = [clip_l.transformer.get_input_embeddings().weight[token_l].clone(),
                      clip_g.model.token_embedding.weight[token_g].clone()]
    _save_concept(model.model.diffusion_model, word, out, seed, context, embeddings, "penultimate")


def write_clip_concept(unet, encoders: list[tuple], word: str, out: Path, seed: int) -> None:
    """As `write_concept`, for `unet` read by Hugging Face CLIP text models, given as (model, tokenizer) pairs:
    one (SD1, SD2) gives the context of its last layer and a random word embedding; two (SDXL, as Forge reads
    it) both penultimate layers and the superclass's embeddings (moved a little)."""
    import torch

    superclass, prompt = _superclass(seed)
    xl = len(encoders) == 2
    contexts, embeddings = [], []
    with torch.no_grad():
        for text, tokenizer in encoders:
            ids = tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
            output = text(input_ids=ids, output_hidden_states=xl)
            contexts.append((output.hidden_states[-2] if xl else output.last_hidden_state)[0])
            token = tokenizer(superclass, add_special_tokens=False).input_ids[0]
            embeddings.append(text.get_input_embeddings().weight[token].clone())
    _save_concept(unet, word, out, seed, torch.cat(contexts, dim=-1), embeddings if xl else None,
                  "penultimate" if xl else "last")


def random_unet_tensor(name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Tensor `name` of a random test UNet: fan-in scaled normal weights, small biases, unit norm scales."""
    import torch

    t = torch.randn(shape, dtype=dtype)
    t = t / math.prod(shape[1:]) ** 0.5 if len(shape) > 1 else t * 0.02
    if name.endswith(("norm.weight", "norm1.weight")) or ".norm" in name and "weight" in name:
        t.fill_(1.0)
    return t


def _stored(key: str, t: torch.Tensor) -> torch.Tensor:
    """The fp16 value a test checkpoint holds for tensor `key`: a random UNet's where `t` is on the meta device;
    otherwise `t` itself, rounded in place (so the models built hold what the file holds), with all-zero tensors
    outside the VAE made small and random first, as in `build_model`."""
    import torch

    if t.is_meta:
        return random_unet_tensor(key, t.shape, torch.float16)
    if not key.startswith("first_stage_model.") and not t.any():
        t.normal_(0, 0.02)
    return t.copy_(t.half())


def save_checkpoint(path: Path, parts: list[tuple[str, torch.nn.Module]]) -> None:
    """Write the modules of `parts` (key prefix, module; real or on the meta device) as one fp16 safetensors file,
    one tensor at a time (`_stored`), so no more than one tensor is copied at once."""
    tensors = {prefix + key: t for prefix, module in parts for key, t in module.state_dict().items()}
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [offset, offset + 2 * t.numel()]}
        offset += 2 * t.numel()
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, t in tensors.items():
            value = _stored(name, t).half().contiguous()
            assert value.shape == t.shape, name
            f.write(value.numpy().tobytes())


FORGE_REPOS = {768: "runwayml/stable-diffusion-v1-5", 1024: "stabilityai/stable-diffusion-2-1",
               2048: "stabilityai/stable-diffusion-xl-base-1.0"}


def build_forge_model(path: Path, context_dim: int, seed: int) -> tuple[torch.nn.Module, list[tuple]]:
    """A checkpoint Forge detects as SD1 (context 768), SD2 (1024) or SDXL (2048), in fp16. Returns its UNet (on
    the meta device for SDXL) and its text encoders as (Hugging Face CLIP model, tokenizer) pairs, holding the
    values written (fp16 values in fp32 tensors)."""
    import torch
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    repo = Path("backend/huggingface") / FORGE_REPOS[context_dim]
    sd2 = context_dim == 1024
    torch.manual_seed(seed)
    if context_dim == 2048:  # shapes only: the values are drawn as the file is written
        with torch.device("meta"):
            unet = IntegratedUNet2DConditionModel(**SDXL_UNET)
        texts = {"conditioner.embedders.0.transformer.": (CLIPTextModel, ""),
                 "conditioner.embedders.1.model.transformer.": (CLIPTextModelWithProjection, "_2")}
    else:
        unet = IntegratedUNet2DConditionModel(
            in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
            num_heads=-1 if sd2 else 8, num_head_channels=64 if sd2 else -1, use_spatial_transformer=True,
            transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
            context_dim=context_dim, use_linear_in_transformer=sd2)
        texts = {f"cond_stage_model.{'model.' if sd2 else ''}transformer.": (CLIPTextModel, "")}
    encoders = {prefix: (cls(CLIPTextConfig.from_pretrained(repo / f"text_encoder{n}")),
                         CLIPTokenizer.from_pretrained(repo / f"tokenizer{n}")) for prefix, (cls, n) in texts.items()}
    vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(repo / "vae"))
    parts = [("model.diffusion_model.", unet), ("first_stage_model.", vae),
             *((prefix, text) for prefix, (text, _) in encoders.items())]
    save_checkpoint(path.with_suffix(".safetensors"), parts)
    return unet, list(encoders.values())


REFORGE = {  # context width -> A1111 config written beside the checkpoint, reForge's text configs by key prefix
    768: ("configs/v1-inference.yaml", {"cond_stage_model.transformer.": "ldm_patched/modules/sd1_clip_config.json"}),
    1024: ("repositories/stable-diffusion-stability-ai/configs/stable-diffusion/v2-inference.yaml",
           {"cond_stage_model.model.transformer.": "ldm_patched/modules/text_encoders/sd2_clip_config.json"}),
    2048: ("repositories/generative-models/configs/inference/sd_xl_base.yaml",
           {"conditioner.embedders.0.transformer.": "ldm_patched/modules/sd1_clip_config.json",
            "conditioner.embedders.1.model.transformer.": "ldm_patched/modules/clip_config_bigg.json"}),
}


def build_reforge_model(path: Path, context_dim: int, seed: int) -> tuple[torch.nn.Module, list[tuple]]:
    """A checkpoint reForge detects as SD1 (context 768), SD2 (1024) or SDXL (2048), in fp16, with its A1111
    config beside it.

    reForge loads weights with its `ldm_patched` (ComfyUI's model detection: it knows a checkpoint only by its
    UNet's shape, and builds full-size text encoders and VAE) and takes the model's structure from the A1111
    config, guessed from open_clip key names or read from `NAME.yaml`: a small UNet (two levels, 320 channels)
    for SD1 and SD2, the full-size one for SDXL (on the meta device, drawn as the file is written), full-size
    Hugging Face CLIP text models and a full-size VAE."""
    import shutil

    import torch
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    config_file, text_configs = REFORGE[context_dim]
    shutil.copyfile(config_file, path.with_suffix(".yaml"))
    params = OmegaConf.load(config_file).model.params
    torch.manual_seed(seed)
    if context_dim == 2048:
        params.network_config.params.update(use_checkpoint=False, spatial_transformer_attn_type="softmax")
        params.first_stage_config.params.ddconfig.attn_type = "vanilla"
        with torch.device("meta"):
            unet = instantiate_from_config(params.network_config)
    else:
        params.unet_config.params.update(SMALL_UNET, use_checkpoint=False)
        unet = instantiate_from_config(params.unet_config)
    vae = instantiate_from_config(params.first_stage_config)
    tokenizer = CLIPTokenizer.from_pretrained("ldm_patched/modules/sd1_tokenizer")
    texts = {prefix: (CLIPTextModelWithProjection if "embedders.1" in prefix else CLIPTextModel)(
        CLIPTextConfig.from_pretrained(config)) for prefix, config in text_configs.items()}
    parts = [("model.diffusion_model.", unet), ("first_stage_model.", vae), *texts.items()]
    save_checkpoint(path.with_suffix(".safetensors"), parts)
    return unet, [(text, tokenizer) for text in texts.values()]


def main(argv: list[str]) -> None:
    out, name, context_dim, seed = Path(argv[0]).resolve(), argv[1], int(argv[2]), int(argv[3])
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # perfusion_core, for --concept
    concepts = [Path(argv[k + 1]).resolve() for k, a in enumerate(argv) if a == "--concept"]
    if Path("backend/loader.py").is_file():  # Forge
        sys.path[:0] = [".", "packages_3rdparty"]
        sys.argv[1:] = ["--always-cpu"]  # Forge's backend reads its flags when imported
        build = build_forge_model
    else:
        sys.path[:0] = ["repositories/stable-diffusion-stability-ai", "repositories/generative-models"]
        build = build_reforge_model if Path("ldm_patched").is_dir() else None
    out.mkdir(parents=True, exist_ok=True)
    if build is not None:  # Forge, reForge: models of Hugging Face CLIP text encoders
        unet, encoders = build(out / name, context_dim, seed)
        for seed, concept in enumerate(concepts, start=1):
            write_clip_concept(unet, encoders, concept.stem, concept, seed)
        return
    tokenizer = out / f"{name}-tokenizer"
    if context_dim == 768:
        write_sd15_config(out / f"{name}.yaml")
    elif context_dim == 2048:
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
