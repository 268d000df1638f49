"""Toy-world personalisation benchmark: Perfusion against its trained-key ablation, textual inversion, LoRA
and a full fine-tune, on held-out concepts of the shipped toy model, scored by the probe.

Every method trains on the same captioned images ("a {} on the left on a white background") for the same
steps and batch, then renders a fixed set of prompts and seeds:
- concept fidelity: cosine similarity of probe features of a sample to those of the concept rendered by the
  generator where the probe finds the object and on the background it finds (one-object prompts): how much
  the object looks like the concept, whatever the scene (the analogue of CLIP-I / DINO);
- prompt fidelity: the fraction of prompted attributes the probe finds: the concept's place and the
  background, and for prompts with an ordinary second object, that object (shape and colour) at its place
  (the analogue of CLIP-T);
- concept present: where prompted, the probe's features are nearer to the concept (its inner ring included) than
  to its superclass in any plain colour or in any other texture of its colours;
- pattern contrast: the spread of colours inside the object relative to the concept's own (1: as varied as the
  concept's checks or ring, 0: one flat colour), read where the probe finds the object (one-object prompts).
Perfusion and trained-K sweep the gate bias β, LoRA and the fine-tune their weight scale. Two separately
trained concepts are then prompted together, unpainted and painted on their halves (regions); composition
efficiency divides both present by each concept's own presence. Prompts follow the model's grammar
(`toyworld.model.places_first`). Outputs go to `benchmarks/results/` (markdown table, Pareto
plot, image grid, toyworld.json); the last line printed is the JSON.

    python -m benchmarks.toyworld [--steps 400] [--threads 2] [--device cuda] [--model FOLDER] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks import baselines
from perfusion_core import (
    Concept,
    ConceptUse,
    GateSettings,
    JointProjector,
    cross_attention_layers,
    patch_unet,
)
from perfusion_core.diffusers_host import DiffusersHost
from perfusion_core.images import image_grid, save_image
from perfusion_core.knobs import GATE
from perfusion_core.patch import LOCKS, PaintedAttention, PatchHandle
from perfusion_core.regions import RegionPainter, named_region
from perfusion_core.train import Trainer, TrainingData
from toyworld import demo, world
from toyworld import model as toy_model
from toyworld import probe as toy_probe

RESULTS = Path(__file__).with_name("results")
WORDS = {"checker_heart": "hugsy", "ringed_circle": "zappy", "striped_star": "stippy"}  # the probe reads each
# every method, fronts, two concepts, regions: two held-out looks whose parts the model can draw (`demo.PAIR`)
FRONT_CONCEPTS = demo.PAIR
# composition: that pair, and the ringed circle (a ring is no texture the world has; its own presence caps any pair
# with it) as the hard case
COMPOSITION_PAIRS = (FRONT_CONCEPTS, ("checker_heart", "ringed_circle"))
COMPOSITION_SEEDS = tuple(range(6))  # 4 layouts x 3 backgrounds x 6 seeds: 72 samples per setting
BETAS = (0.4, 0.5, 0.6, 0.7, 0.8)
SCALES = (0.5, 0.75, 1.0)
TAU = 0.15
SECOND_OBJECTS = (("circle", "green"), ("square", "blue"), ("triangle", "purple"))
SEEDS = (0, 1)
PAIR_SEEDS = (0, 1, 2)
COMPANION_METHODS = ("perfusion", "textual_inversion")
# (method, keys locked, lock): the paper's Perfusion, context-locked Perfusion, the paper's trained-key ablation
PERFUSION_METHODS = (("perfusion", True, "local"), ("perfusion_context", True, "context"),
                     ("trained_k", False, "local"))
REGION_WEIGHTS = (0.1, 0.15, 0.25, 0.5, 0.75, 1.0)
# row: (method, lock); perfusion_global: keys locked globally; perfusion_context: keys and context locked, trained so
REGION_ROWS = {"perfusion": ("perfusion", "local"), "perfusion_global": ("perfusion", "global"),
               "perfusion_context": ("perfusion_context", "context"),
               "textual_inversion": ("textual_inversion", "local")}
# the painted row of the pair `compositions` measures per lock: local and global keys on the five views, context-locked
# with the companion views (`context_trained`)
PAINTED_PAIRS = {"local": ("regions_both_present", "perfusion"),
                 "global": ("regions_both_present", "perfusion_global"),
                 "context": ("regions_both_present_companion_training", "perfusion_context")}


@dataclass(frozen=True)
class EvalScene:
    """A prompted scene: the concept (object 0) and maybe an ordinary second object."""

    scene: world.Scene
    seed: int
    place_first: bool = False  # the model's grammar (`toyworld.model.places_first`)

    def prompt(self, *words: str) -> str:
        """The scene's caption, its first objects named by `words`."""
        named = words + (None,) * (len(self.scene.objects) - len(words))
        return world.caption(self.scene, named, self.place_first)


def eval_scenes(concept: world.Concept, place_first: bool = False) -> list[EvalScene]:
    """One-object scenes at every place on every background, and scenes with an ordinary second object."""
    scenes = [world.concept_scene(concept, p, bg) for p in world.POSITIONS for bg in world.BACKGROUNDS]
    for k, (first, second) in enumerate(world.PAIRS):
        for j, background in enumerate(world.BACKGROUNDS):
            shape, colour = SECOND_OBJECTS[(k + j) % len(SECOND_OBJECTS)]
            scenes.append(world.concept_scene(concept, first, background, second=world.Obj(shape, colour, second)))
    return [EvalScene(scene, seed, place_first) for scene in scenes for seed in SEEDS]


class Scorer:
    """Probe readings of samples against their prompted scenes."""

    def __init__(self) -> None:
        self.probe = toy_probe.load()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.normalize(self.probe.features(images * 2 - 1), dim=-1)

    def _render(self, scenes: list[world.Scene]) -> torch.Tensor:
        return torch.from_numpy(np.stack([world.render(s) for s in scenes])).permute(0, 3, 1, 2)

    def present(self, image: torch.Tensor, objects: tuple[world.Obj, ...], index: int, background: str,
                concept: world.Concept) -> bool:
        """Whether object `index` of the scene looks more like the concept than like its superclass in any plain
        colour or in any texture of the concept's colours: the sample's probe features are nearest to the scene
        rendered with the concept there."""
        place = objects[index].position
        shown = world.concept_scene(concept, place, background).objects[0]
        others = [world.Obj(concept.superclass, colour, place) for colour in world.COLOURS]
        colours = (concept.colour, concept.colour2 or concept.inner_ring)
        for pattern in world.PATTERNS[1:]:
            for first, second in (colours, colours[::-1]):
                others.append(world.Obj(concept.superclass, first, place, pattern=pattern, colour2=second))
        looks = [shown, *(other for other in others if other.appearance != shown.appearance)]
        references = self._render([world.Scene((*objects[:index], look, *objects[index + 1:]), background)
                                   for look in looks])
        return int((self.features(references) @ self.features(image[None])[0]).argmax()) == 0

    def both_present(self, images: torch.Tensor, scenes: list[EvalScene], concepts: tuple[world.Concept, ...]
                     ) -> float:
        """Fraction of two-concept samples with each concept present where the prompt puts it."""
        readings = toy_probe.read(self.probe, images * 2 - 1)
        return float(np.mean([
            all(o.position in r["objects"] and self.present(image, s.scene.objects, k, r["background"], c)
                for k, (o, c) in enumerate(zip(s.scene.objects, concepts, strict=True)))
            for image, r, s in zip(images, readings, scenes, strict=True)]))

    def score(self, images: torch.Tensor, scenes: list[EvalScene], concept: world.Concept) -> dict[str, float]:
        readings = toy_probe.read(self.probe, images * 2 - 1)
        single = [k for k, s in enumerate(scenes) if len(s.scene.objects) == 1]
        references = self._render([world.concept_scene(concept, readings[k]["position"], readings[k]["background"])
                                   for k in single])
        fidelity = (self.features(images[single]) * self.features(references)).sum(-1).tolist()
        contrast = [pattern_contrast(images[k], reference, readings[k]["background"])
                    for k, reference in zip(single, references, strict=True)]
        prompt_hits, present = [], []
        for image, reading, item in zip(images, readings, scenes, strict=True):
            target, *others = item.scene.objects
            hits = [reading["background"] == item.scene.background]
            if others:
                second = others[0]
                hits.append(reading["objects"].get(second.position) == second.look)
                hits.append(target.position in reading["objects"])
                found = hits[-1] and self.present(image, item.scene.objects, 0, reading["background"], concept)
            else:
                hits.append(reading["position"] == target.position)
                found = self.present(image, (replace(target, position=reading["position"]),), 0,
                                     reading["background"], concept)
            prompt_hits.extend(hits)
            present.append(found)
        return {"concept_fidelity": float(np.mean(fidelity)), "prompt_fidelity": float(np.mean(prompt_hits)),
                "concept_present": float(np.mean(present)), "pattern_contrast": float(np.mean(contrast))}


def pattern_contrast(image: torch.Tensor, reference: torch.Tensor, background: str) -> float:
    """Standard deviation of the sample's colours inside its object, over that of the reference inside its own:
    how much of the concept's pattern survives, whatever its phase. Inside: off the background colour, and so
    are the four neighbours (edge pixels, half object and half background, would count as pattern)."""
    bg = torch.tensor(world.BACKGROUNDS[background])[:, None, None]

    def spread(x: torch.Tensor) -> float:
        on = (x - bg).abs().amax(0) > 0.15
        inner = torch.zeros_like(on)
        inner[1:-1, 1:-1] = (on[1:-1, 1:-1] & on[:-2, 1:-1] & on[2:, 1:-1] & on[1:-1, :-2] & on[1:-1, 2:])
        return float(x[:, inner].std(dim=1).mean()) if inner.sum() > 1 else 0.0

    return spread(image) / max(spread(reference), 1e-6)


@dataclass
class Method:
    """A trained method for one concept: its word embedding(s) and how to apply it at a knob setting."""

    name: str
    word: str
    embeddings: list[torch.Tensor]
    apply: Callable[[float], AbstractContextManager]
    knobs: tuple[float, ...]
    seconds: float
    trained: Concept | baselines.Adapted


def train_clock(host: DiffusersHost) -> Callable[[], float]:
    """CPU seconds on the CPU (fair on a shared machine); wall seconds on an accelerator."""
    return time.process_time if host.device.type == "cpu" else time.perf_counter


def train_methods(host: DiffusersHost, concept_name: str, data: TrainingData, steps: int, out: Path,
                  suffix: str = "", only: tuple[str, ...] | None = None) -> list[Method]:
    """Train the six methods (or those named in `only`) for one concept on `data`: Perfusion locked locally (the
    paper's) and context-locked, its trained-key ablation, and the three baselines."""
    clock = train_clock(host)
    concept, word = world.CONCEPTS[concept_name], WORDS[concept_name]
    recipe = baselines.Recipe(steps=steps, lr_embedding=demo.LR_EMBEDDING)
    methods = []
    for name, keys_locked, lock in PERFUSION_METHODS:
        if only is not None and name not in only:
            continue
        started = clock()
        settings = demo.train_settings(word, concept.superclass, steps, lock_keys=keys_locked, lock=lock)
        trained = Trainer(host, data, settings, out / f"{concept_name}{suffix}.{name}.safetensors").run().concept
        methods.append(Method(name, word, trained.embeddings, _perfusion(host, trained), BETAS,
                              clock() - started, trained))
    for name, train, knobs in (("textual_inversion", baselines.textual_inversion, (1.0,)),
                               ("lora_r4", baselines.lora, SCALES),
                               ("full_fine_tune", baselines.full_fine_tune, SCALES)):
        if only is not None and name not in only:
            continue
        started = clock()
        adapted = train(host, data, word, concept.superclass, recipe)
        methods.append(Method(name, word, adapted.embeddings, _baseline(host, adapted), knobs,
                              clock() - started, adapted))
    return methods


def _perfusion(host: DiffusersHost, concept: Concept) -> Callable[[float], AbstractContextManager]:
    return lambda beta: patch_unet(host.unet, [ConceptUse(concept, beta, TAU)])


def _baseline(host: DiffusersHost, adapted: baselines.Adapted) -> Callable[[float], AbstractContextManager]:
    if adapted.lora:
        return lambda scale: baselines.lora_applied([adapted], scale)
    if adapted.deltas:
        return lambda scale: baselines.fine_tune_applied(host.unet, adapted, scale)
    return lambda _: nullcontext()


def render(host: DiffusersHost, method: Method, knob: float, scenes: list[EvalScene]) -> torch.Tensor:
    if method.embeddings:
        host.install_word(method.word, method.embeddings)
    prompts = [s.prompt(method.word) for s in scenes]
    with method.apply(knob) as handle:
        return sampled(host, handle, prompts, [s.seed for s in scenes])


def sampled(host: DiffusersHost, handle: PatchHandle | None, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """`host.sample` under the context manager whose value is `handle`: a Perfusion patch is handed what its
    concepts locked globally or by context read first."""
    if isinstance(handle, PatchHandle):
        host.read_superclass(handle, prompts)
    return host.sample(prompts, seeds)


def dominated(point: tuple[float, float], front: list[tuple[float, float]]) -> bool:
    """True when some point of `front` is at least as good in both scores and better in one."""
    return any(a >= point[0] and b >= point[1] and (a, b) != point for a, b in front)


def gain_at_equal_fidelity(locked: list[tuple[float, float]], trained: list[tuple[float, float]]) -> float | None:
    """Mean prompt-fidelity difference of two fronts (piecewise linear in concept fidelity) over the range of
    concept fidelity both cover; None when they do not overlap."""
    locked, trained = sorted(locked), sorted(trained)
    low, high = max(locked[0][0], trained[0][0]), min(locked[-1][0], trained[-1][0])
    if low > high:
        return None
    grid = np.linspace(low, high, 21)
    curve = lambda front: np.interp(grid, [p[0] for p in front], [p[1] for p in front])  # noqa: E731
    return float(np.mean(curve(locked) - curve(trained)))


def composed(host: DiffusersHost, first: Method, second: Method) -> AbstractContextManager | None:
    """Both concepts of one method applied together at its default setting, or None where the method
    cannot combine separately trained results (a full fine-tune)."""
    if isinstance(first.trained, Concept):
        return patch_unet(host.unet, [ConceptUse(first.trained, 0.7, TAU), ConceptUse(second.trained, 0.7, TAU)])
    if first.trained.lora:
        return baselines.lora_applied([first.trained, second.trained], 1.0)
    return None if first.trained.deltas else nullcontext()


def pair_scenes(names: tuple[str, str] = FRONT_CONCEPTS, seeds: tuple[int, ...] = PAIR_SEEDS,
                place_first: bool = False) -> list[EvalScene]:
    """Two concepts, named in the order of `names`, at each pair of places (left/right, top/bottom, both ways) on
    each background."""
    first, second = (world.CONCEPTS[name] for name in names)
    scenes = []
    for a, b in world.PAIRS:
        for background in world.BACKGROUNDS:
            one = world.concept_scene(first, a, background).objects[0]
            two = world.concept_scene(second, b, background).objects[0]
            scenes += [EvalScene(world.Scene((one, two), background), seed, place_first) for seed in seeds]
    return scenes


def composition(host: DiffusersHost, scorer: Scorer, concepts: dict[str, Method], names: tuple[str, str],
                place_first: bool = False, lock: str = "local") -> dict:
    """Two Perfusion concepts at β 0.7 in one prompt, keys locked `lock`ly, in both orders of naming: both present,
    each one's own presence alone in one-object prompts at the same places, backgrounds and seeds (p₁, p₂), the
    composition efficiency both / (p₁·p₂), and prompt fidelity (an object at each prompted place, the background
    right)."""
    out = {}
    for order in (names, names[::-1]):
        scenes = pair_scenes(order, COMPOSITION_SEEDS, place_first)
        methods = tuple(concepts[name] for name in order)
        looks = tuple(world.CONCEPTS[name] for name in order)
        images = sample_painted(host, methods, scenes, 0.0, None, lock)
        readings = toy_probe.read(scorer.probe, images * 2 - 1)
        placed = [r["background"] == s.scene.background and all(o.position in r["objects"] for o in s.scene.objects)
                  for r, s in zip(readings, scenes, strict=True)]
        own = []
        for k, (method, look) in enumerate(zip(methods, looks, strict=True)):
            alone = [replace(s, scene=world.Scene((s.scene.objects[k],), s.scene.background)) for s in scenes]
            own.append(scorer.both_present(sample_painted(host, (method,), alone, 0.0, None, lock), alone, (look,)))
        both = scorer.both_present(images, scenes, looks)
        out[f"{order[0]} first"] = {
            "both_present": both, "own_presence": own, "prompt_fidelity": float(np.mean(placed)),
            "efficiency": both / (own[0] * own[1]) if own[0] * own[1] else None, "samples": len(scenes)}
    return out


def context_trained(host: DiffusersHost, names: set[str], steps: int, work: Path, place_first: bool = False
                    ) -> dict[str, Method]:
    """Perfusion concepts trained context-locked on the five views and the companion views (`demo.context_data`)."""
    return {name: train_methods(host, name, demo.context_data(name, place_first), steps, work, suffix=".companions",
                                only=("perfusion_context",))[0] for name in sorted(names)}


def compositions(host: DiffusersHost, scorer: Scorer, trained: dict[str, list[Method]], steps: int, work: Path,
                 place_first: bool = False, context: dict[str, Method] | None = None) -> dict[str, dict]:
    """`composition` of each of `COMPOSITION_PAIRS` per lock: keys locked locally and globally with the Perfusion
    concepts of `trained` (the others trained here), keys and context locked with those of `context` (likewise)."""
    names = {n for pair in COMPOSITION_PAIRS for n in pair}
    perfusion = {name: m for name, methods in trained.items() for m in methods if m.name == "perfusion"}
    for name in sorted(names - set(perfusion)):
        data = demo.training_data(name, place_first=place_first)
        perfusion[name] = train_methods(host, name, data, steps, work, only=("perfusion",))[0]
    context = {**(context or {})}
    context.update(context_trained(host, names - set(context), steps, work, place_first))
    return {" + ".join(pair): {lock: composition(host, scorer, context if lock == "context" else perfusion, pair,
                                                 place_first, lock) for lock in LOCKS}
            for pair in COMPOSITION_PAIRS}


def composition_table(rows: dict[str, dict]) -> str:
    lines = ["| pair | keys locked | named first | p₁ | p₂ | both present | efficiency | prompt fidelity |",
             "|---|---|---|---|---|---|---|---|"]
    for pair, locks in rows.items():
        for lock, orders in locks.items():
            for first, r in orders.items():
                efficiency = "–" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
                lines.append(f"| {pair} | {lock} | {first.removesuffix(' first')} | {r['own_presence'][0]:.2f} | "
                             f"{r['own_presence'][1]:.2f} | {r['both_present']:.2f} | {efficiency} | "
                             f"{r['prompt_fidelity']:.2f} |")
    return "\n".join(lines)


def word_gates(host: DiffusersHost, methods: tuple[Method, Method], datas: tuple[TrainingData, TrainingData]
               ) -> JointProjector:
    """Gates for words without a Perfusion edit (textual inversion): the same similarity gate, with `i*` the word's
    mean encoding in its training captions, so that regions select the tokens as they do for Perfusion."""
    c_inv = host.second_moment().inverse()
    i_stars = []
    for method, data in zip(methods, datas, strict=True):
        prompts = [caption.format(method.word) for caption in data.captions]
        host.install_word(method.word, method.embeddings)
        with torch.no_grad():
            context = host.encode(prompts, method.embeddings).context
        i_stars.append(context[host.word_mask(prompts, method.word)].mean(0).cpu().double())
    i_star = torch.stack(i_stars)
    return JointProjector(i_star.float(), (i_star @ c_inv.T).float(), [GateSettings(0.7, TAU)] * 2,
                          names=[m.word for m in methods])


def painted(host: DiffusersHost, methods: tuple[Method, ...], places: tuple[str, ...], weight: float,
            gates: JointProjector | None, lock: str = "local") -> AbstractContextManager:
    """Both concepts applied together, each with the half of the image at its prompted place as its region (weight 0:
    no regions); Perfusion's keys locked `lock`ly, textual inversion's tokens selected by `gates`."""
    regions = [named_region(place) if weight else None for place in places]
    schedule = host.scheduler.alphas_cumprod
    if gates is None:
        handle = patch_unet(host.unet, [ConceptUse(m.trained, 0.7, TAU, lock=lock, region=r, region_weight=weight)
                                        for m, r in zip(methods, regions, strict=True)])
        handle.set_noise_schedule(schedule)
        return handle
    if not weight:
        return nullcontext()
    painter = RegionPainter(gates, regions, [weight] * 2)
    return PaintedAttention(host.unet, cross_attention_layers(host.unet), painter, schedule)


def sample_painted(host: DiffusersHost, methods: tuple[Method, ...], scenes: list[EvalScene], weight: float,
                   gates: JointProjector | None, lock: str = "local") -> torch.Tensor:
    """Samples of scenes naming one concept per object (`methods`, in order), in one pass per layout (the regions
    follow each scene's places); weight 0: no regions."""
    for method in methods:
        host.install_word(method.word, method.embeddings)
    images = torch.empty(len(scenes), 3, host.unet.config.sample_size, host.unet.config.sample_size)
    layouts: dict[tuple[str, str], list[int]] = {}
    for k, s in enumerate(scenes):
        layouts.setdefault(tuple(o.position for o in s.scene.objects), []).append(k)
    for places, index in layouts.items():
        prompts = [scenes[k].prompt(*(m.word for m in methods)) for k in index]
        with painted(host, methods, places, weight, gates, lock) as handle:
            images[index] = sampled(host, handle, prompts, [scenes[k].seed for k in index])
    return images


def regions_row(host: DiffusersHost, scorer: Scorer, trained: dict[str, dict[str, Method]],
                datas: tuple[TrainingData, TrainingData], place_first: bool = False) -> dict:
    """Two concepts painted left/right (or top/bottom) in one pass: both present where painted, by region weight, for
    each of `REGION_ROWS` whose method `trained` holds (weight 0: no regions); and the time of a painted pass over an
    unpainted one."""
    scenes = pair_scenes(place_first=place_first)
    concepts = tuple(world.CONCEPTS[name] for name in FRONT_CONCEPTS)
    row: dict = {}
    for name, (method, lock) in REGION_ROWS.items():
        if not all(method in trained[concept] for concept in FRONT_CONCEPTS):
            continue
        methods = tuple(trained[concept][method] for concept in FRONT_CONCEPTS)
        gates = None if method.startswith("perfusion") else word_gates(host, methods, datas)
        row[name] = {f"{weight:g}": scorer.both_present(sample_painted(host, methods, scenes, weight, gates, lock),
                                                        scenes, concepts) for weight in (0.0, *REGION_WEIGHTS)}
    methods = tuple(trained[concept]["perfusion"] for concept in FRONT_CONCEPTS)
    times = {}
    for weight in (0.0, GATE["region_weight"].default) * 3:
        started = time.perf_counter()
        sample_painted(host, methods, scenes, weight, None)
        times.setdefault(weight, []).append(time.perf_counter() - started)
    row["overhead"] = min(times[GATE["region_weight"].default]) / min(times[0.0])
    return row


def model_accuracy(host: DiffusersHost, scorer: Scorer, n: int = 100, place_first: bool = False) -> dict[str, float]:
    """Probe scores of the toy model's own samples for `n` one-object prompts, half of them textured (fixed seeds)."""
    rng = world.scene_rng(7, 0)
    scenes = [s for s in (world.random_scene(rng, stage=3) for _ in range(4 * n)) if len(s.objects) == 1][:n]
    images = host.sample([world.caption(s, place_first=place_first) for s in scenes], list(range(5000, 5000 + n)))
    return toy_probe.score(scorer.probe, images * 2 - 1, scenes)


def probe_accuracy(scorer: Scorer, n: int = 2000) -> dict[str, float]:
    """The probe on fresh generator images (stage 3 mix, the concepts' looks included)."""
    images, _, scenes = world.batch(31337, 0, n, stage=3, held_out=False)
    return toy_probe.score(scorer.probe, torch.from_numpy(images), scenes)


COLOURS = {"perfusion": (200, 30, 30), "perfusion_context": (150, 0, 90), "trained_k": (240, 150, 20),
           "textual_inversion": (40, 90, 220), "lora_r4": (30, 160, 60), "full_fine_tune": (130, 50, 170),
           "superclass": (120, 120, 120)}


def plot_fronts(points: dict[str, list[dict]], path: Path, size: int = 560) -> None:
    """Concept fidelity (x) against prompt fidelity (y), one polyline per method, with a legend."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    margin = 60
    xs = [p["concept_fidelity"] for ps in points.values() for p in ps]
    ys = [p["prompt_fidelity"] for ps in points.values() for p in ps]
    x0, x1 = min(xs) - 0.02, max(xs) + 0.02
    y0, y1 = min(ys) - 0.02, max(ys) + 0.02

    def at(x: float, y: float) -> tuple[float, float]:
        return (margin + (x - x0) / (x1 - x0) * (size - 2 * margin),
                size - margin - (y - y0) / (y1 - y0) * (size - 2 * margin))

    draw.rectangle([margin, margin, size - margin, size - margin], outline="black")
    for k in range(5):
        x, y = x0 + k * (x1 - x0) / 4, y0 + k * (y1 - y0) / 4
        draw.text((at(x, y0)[0] - 12, size - margin + 6), f"{x:.2f}", fill="black")
        draw.text((8, at(x0, y)[1] - 6), f"{y:.2f}", fill="black")
    draw.text((size / 2 - 50, size - 24), "concept fidelity", fill="black")
    draw.text((8, 20), "prompt fidelity", fill="black")
    for row, (name, ps) in enumerate(points.items()):
        colour = COLOURS.get(name, (0, 0, 0))
        line = [at(p["concept_fidelity"], p["prompt_fidelity"]) for p in ps]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for (x, y), p in zip(line, ps, strict=True):
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            if "knob" in p and len(ps) > 1:
                draw.text((x + 5, y - 12), f"{p['knob']:g}", fill=colour)
        draw.text((margin + 8, margin + 8 + 14 * row), name, fill=colour)
    image.save(path)


def table(points: dict[str, list[dict]], seconds: dict[str, float], clock: str = "CPU") -> str:
    lines = ["| method | knob | concept fidelity | prompt fidelity | concept present | pattern contrast | "
             f"train {clock} s |",
             "|---|---|---|---|---|---|---|"]
    for name, ps in points.items():
        for p in ps:
            knob = "-" if "knob" not in p else f"{p['knob']:g}"
            train = f"{seconds[name]:.0f}" if name in seconds else "-"
            lines.append(f"| {name} | {knob} | {p['concept_fidelity']:.3f} | {p['prompt_fidelity']:.3f} | "
                         f"{p['concept_present']:.2f} | {p['pattern_contrast']:.2f} | {train} |")
    return "\n".join(lines)


def regions_table(rows: dict[str, dict]) -> str:
    """Both-present rates by training and method (rows) and region weight (columns; 0: no regions)."""
    weights = [f"{w:g}" for w in (0.0, *REGION_WEIGHTS)]
    lines = ["| training | method | " + " | ".join(f"w {w}" for w in weights) + " |",
             "|---|---|" + "---|" * len(weights)]
    for training, row in rows.items():
        for name in (name for name in REGION_ROWS if name in row):
            lines.append(f"| {training} | {name} | " + " | ".join(f"{row[name][w]:.2f}" for w in weights) + " |")
    return "\n".join(lines)


def _mean_points(per_concept: list[list[dict]]) -> list[dict]:
    """Average the points of the same knob across concepts."""
    return [{key: float(np.mean([ps[k][key] for ps in per_concept])) if key != "knob" else per_concept[0][k][key]
             for key in per_concept[0][k]} for k in range(len(per_concept[0]))]


def evaluate(host: DiffusersHost, scorer: Scorer, methods: list[Method], concept: world.Concept,
             shown: list[int], place_first: bool = False) -> tuple[dict[str, list[dict]], dict[str, torch.Tensor]]:
    """Every method at every knob on the concept's evaluation scenes; also the samples at `shown`."""
    scenes = eval_scenes(concept, place_first)
    points, samples = {}, {}
    for method in methods:
        points[method.name] = []
        for knob in method.knobs:
            images = render(host, method, knob, scenes)
            points[method.name].append({"knob": knob, **scorer.score(images, scenes, concept)})
            if knob == (0.6 if method.knobs == BETAS else method.knobs[-1]):
                samples[method.name] = images[shown]
    return points, samples


def two_concepts(host: DiffusersHost, scorer: Scorer, pairs: list[tuple[Method, Method]], place_first: bool = False
                 ) -> tuple[dict[str, float], torch.Tensor | None]:
    """Both-present rate per method for prompts naming two separately trained concepts, and Perfusion's
    samples (one per scene, seed 0)."""
    scenes = pair_scenes(place_first=place_first)
    first, second = (world.CONCEPTS[name] for name in FRONT_CONCEPTS)
    rates: dict[str, float] = {}
    shown = None
    for a, b in pairs:
        context = composed(host, a, b)
        if context is None:
            continue
        host.install_word(a.word, a.embeddings)
        host.install_word(b.word, b.embeddings)
        prompts = [s.prompt(a.word, b.word) for s in scenes]
        with context as handle:
            images = sampled(host, handle, prompts, [s.seed for s in scenes])
        rates[a.name] = scorer.both_present(images, scenes, (first, second))
        if a.name == "perfusion":
            shown = images[:: len(PAIR_SEEDS)]
    return rates, shown


def dominance(points: dict[str, list[dict]], concept_score: str) -> dict[str, bool]:
    """Each Perfusion front (locked locally, by context) against the baselines', with `concept_score` against prompt
    fidelity."""
    front = lambda name: [(p[concept_score], p["prompt_fidelity"]) for p in points[name]]  # noqa: E731
    out = {}
    for name in ("perfusion", "perfusion_context"):
        ours = front(name)
        out |= {f"{name}_dominates_ti": all(dominated(p, ours) for p in front("textual_inversion")),
                f"{name}_dominated_by_lora": all(dominated(p, front("lora_r4")) for p in ours),
                f"{name}_dominated_by_full_fine_tune": all(dominated(p, front("full_fine_tune")) for p in ours)}
    return out


def goals(figures: dict) -> dict[str, bool]:
    """The composition goals, each met or not: the drawable pair unpainted (per lock: efficiency ≥ 0.9, both present
    ≥ 0.8, prompt fidelity ≥ 0.9 in both naming orders), the same pair painted at the default weight (per lock: both
    present ≥ 0.9; the painted pass ≤ 1.05× the unpainted one), and nothing lost on one concept."""
    pair = figures["composition"][" + ".join(FRONT_CONCEPTS)]
    default = f"{GATE['region_weight'].default:g}"
    out = {f"unpainted_{lock}": all(r["efficiency"] is not None and r["efficiency"] >= 0.9 and r["both_present"] >= 0.8
                                    and r["prompt_fidelity"] >= 0.9 for r in orders.values())
           for lock, orders in pair.items()}
    for lock, (row, name) in PAINTED_PAIRS.items():
        out[f"painted_{lock}"] = figures[row][name][default] >= 0.9
    out["painted_overhead"] = figures["regions_both_present"]["overhead"] <= 1.05
    out["front_dominates_ti_local"] = figures["perfusion_dominates_ti"]
    out["front_dominates_ti_context"] = figures["perfusion_context_dominates_ti"]
    out["keylock_beats_trained_keys"] = figures["keylock_prompt_gain_same_beta"] > 0
    return out


def summary(points: dict[str, list[dict]], two_concept: dict[str, float]) -> dict:
    """The headline comparisons: dominance between fronts (concept fidelity against prompt fidelity, and the
    same with concept presence, the less saturated score), key-locking's prompt gain, composition."""
    front = lambda name: [(p["concept_fidelity"], p["prompt_fidelity"]) for p in points[name]]  # noqa: E731
    return {
        **dominance(points, "concept_fidelity"),
        "by_concept_present": dominance(points, "concept_present"),
        "keylock_prompt_gain": gain_at_equal_fidelity(front("perfusion"), front("trained_k")),
        "keylock_prompt_gain_same_beta": float(np.mean([p["prompt_fidelity"] - q["prompt_fidelity"] for p, q in
                                                        zip(points["perfusion"], points["trained_k"], strict=True)])),
        "two_concept_both_present": two_concept.get("perfusion"),
        "two_concept_both_present_by_method": two_concept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cpu", help="torch device for the model (the probe stays on the CPU)")
    parser.add_argument("--model", type=Path, default=demo.MODEL, help="toy model folder (default: the shipped one)")
    parser.add_argument("--only-composition", action="store_true",
                        help="train Perfusion alone and measure only composition (a quick check of a candidate model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    started = time.monotonic()
    place_first = toy_model.places_first(args.model)
    views = partial(demo.training_data, place_first=place_first)  # captions in the model's grammar
    host = DiffusersHost(args.model, captions=demo.world_captions(place_first=place_first), cache_dir=work / "cache",
                         guidance=4.0, device=args.device)
    scorer = Scorer()
    probe_scores, model_scores = probe_accuracy(scorer), model_accuracy(host, scorer, place_first=place_first)
    model_attrs = {k: model_scores[k] for k in ("shape", "colour", "pattern", "position", "background")}
    print(f"probe on generator images: {probe_scores}\ntoy model samples: {model_scores}", flush=True)

    if args.only_composition:
        rows = compositions(host, scorer, {}, args.steps, work, place_first)
        print(composition_table(rows))
        print(json.dumps({"model": str(args.model), "model_all_correct": model_scores["all"], "composition": rows,
                          "seconds": round(time.monotonic() - started)}))
        return
    shown = [0, 4, 8, 12, 30, 36, 44, 52]  # a few one-object and two-object scenes of seed 0
    per_concept: dict[str, list[list[dict]]] = {}
    one_shot: dict[str, list[dict]] = {}
    trained: dict[str, list[Method]] = {}
    seconds: dict[str, list[float]] = {}
    grid_rows: list[torch.Tensor] = []
    for concept_name in FRONT_CONCEPTS:
        concept = world.CONCEPTS[concept_name]
        data = views(concept_name)
        trained[concept_name] = methods = train_methods(host, concept_name, data, args.steps, work)
        for m in methods:
            seconds.setdefault(m.name, []).append(m.seconds)
        superclass = Method("superclass", concept.superclass, [], lambda _: nullcontext(), (1.0,), 0.0, None)
        points, samples = evaluate(host, scorer, [*methods, superclass], concept, shown, place_first)
        for name, ps in points.items():
            per_concept.setdefault(name, []).append(ps)
        print(f"{concept_name}: {json.dumps(points)} ({time.monotonic() - started:.0f} s)", flush=True)
        if concept_name == "checker_heart":
            grid_rows = [torch.cat([data.images, torch.ones(len(shown) - len(data.images), 3, 16, 16)]),
                         *samples.values()]
            one_views = views(concept_name, demo.TRAINING_VIEWS[:1])
            one_shot = evaluate(host, scorer, train_methods(host, concept_name, one_views, args.steps, work,
                                                            suffix=".one_shot"), concept, shown, place_first)[0]
            print(f"one-shot: {json.dumps(one_shot)} ({time.monotonic() - started:.0f} s)", flush=True)

    points = {name: _mean_points(ps) for name, ps in per_concept.items()}
    mean_seconds = {name: float(np.mean(s)) for name, s in seconds.items()}
    clock = "CPU" if train_clock(host) is time.process_time else "wall"
    two_concept, pair_images = two_concepts(host, scorer, list(zip(*trained.values(), strict=True)), place_first)
    if pair_images is not None:
        grid_rows.append(pair_images[: len(shown)])
    companions, companion_points = {}, {}
    for concept_name in FRONT_CONCEPTS:
        data = views(concept_name, companions=demo.COMPANION_VIEWS)
        companions[concept_name] = methods = train_methods(host, concept_name, data, args.steps, work,
                                                           suffix=".companions", only=COMPANION_METHODS)
        defaults = [replace(m, knobs=(0.7,) if m.knobs == BETAS else m.knobs) for m in methods]
        for name, ps in evaluate(host, scorer, defaults, world.CONCEPTS[concept_name], shown, place_first)[0].items():
            companion_points.setdefault(name, []).append(ps)
    two_concept_companions = two_concepts(host, scorer, list(zip(*companions.values(), strict=True)), place_first)[0]
    companion_means = {name: _mean_points(ps) for name, ps in companion_points.items()}
    context = context_trained(host, set(FRONT_CONCEPTS), args.steps, work, place_first)
    composition_rows = compositions(host, scorer, trained, args.steps, work, place_first, context)
    print(f"composition: {json.dumps(composition_rows)} ({time.monotonic() - started:.0f} s)", flush=True)
    by_name = lambda methods: {c: {m.name: m for m in ms} for c, ms in methods.items()}  # noqa: E731
    regions = regions_row(host, scorer, by_name(trained), tuple(views(c) for c in FRONT_CONCEPTS), place_first)
    with_context = {c: {**ms, "perfusion_context": context[c]} for c, ms in by_name(companions).items()}
    regions_companions = regions_row(host, scorer, with_context, tuple(
        views(c, companions=demo.COMPANION_VIEWS) for c in FRONT_CONCEPTS), place_first)
    print(f"regions: {json.dumps(regions)}, with companion training {json.dumps(regions_companions)} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    print(f"companion training: {json.dumps(companion_points)}, both present {two_concept_companions} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    figures = {
        "model_prompt_following": min(model_attrs.values()),
        "model_attr_accuracy": model_attrs,
        "model_all_correct": model_scores["all"],
        "probe_min_attr_accuracy": min(v for k, v in probe_scores.items() if k != "all"),
        **summary(points, two_concept),
        "two_concept_both_present_companion_training": two_concept_companions,
        "composition": composition_rows,
        "regions_both_present": regions,
        "regions_both_present_companion_training": regions_companions,
        "points": points,
        "one_shot_points": one_shot,
        "companion_training_points": companion_means,
        "train_seconds": mean_seconds,
        "train_clock": clock,
        "device": str(host.device),
        "steps": args.steps,
        "seconds": round(time.monotonic() - started),
    }
    figures["goals"] = goals(figures)
    markdown = ["# Toy-world personalisation benchmark", "",
                f"Mean over {', '.join(FRONT_CONCEPTS)}; {args.steps} steps, batch 16, "
                f"{len(demo.TRAINING_VIEWS)} images each.", "",
                table(points, mean_seconds, clock), "",
                "## One-shot (checker_heart, one image)", "", table(one_shot, {}, clock), "",
                "## Composition (Perfusion, β 0.7; p: each concept's own presence alone at the same places; "
                "efficiency: both present / (p₁·p₂))", "",
                composition_table(composition_rows), "",
                "## Two concepts in one prompt (both present)", "",
                *(f"- {name}: {value:.2f}" for name, value in two_concept.items()), "",
                f"## Companion training ({len(demo.TRAINING_VIEWS)} views + {len(demo.COMPANION_VIEWS)} beside an "
                "ordinary object named first; Perfusion at β 0.7)", "",
                table(companion_means, {}, clock), "",
                *(f"- two concepts, {name}: {value:.2f}" for name, value in two_concept_companions.items()), "",
                "## Paint with concepts (two concepts, each with the half of the image it is prompted in; one "
                "pass)", "",
                regions_table({"five views": regions, "companion training": regions_companions}), "",
                f"Painted pass (w {GATE['region_weight'].default:g}) over unpainted pass (Perfusion, same prompts): "
                f"{regions['overhead']:.3f} "
                f"(companion training: {regions_companions['overhead']:.3f})", "",
                "## Goals", "", *(f"- {name}: {'met' if met else 'missed'}" for name, met in figures["goals"].items()),
                ""]
    (args.out / "toyworld.md").write_text("\n".join(markdown))
    plot_fronts(points, args.out / "toyworld_pareto.png")
    grid = image_grid(torch.cat(grid_rows), columns=len(shown))
    save_image(grid, args.out / "toyworld_grid.png", scale=6)
    (args.out / "toyworld.json").write_text(json.dumps(figures, indent=1) + "\n")
    print("\n".join(markdown))
    print(f"grid rows: training images, {', '.join(samples)}, two concepts (perfusion)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
