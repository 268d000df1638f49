"""A procedural text-to-image world where every image is fully described by its caption.

Stage 1: one plain-coloured object ("a red star on the left on a white background").
Stage 2: stage 1 mixed with two-object scenes
("a red star on the left and a green circle on the right on a black background").
Stage 3: stage 2 where half of the objects carry a two-colour texture named in the caption
("a red heart with yellow checks on the left ..."): stripes, checks or dots.
Stage 4: stage 3 where half of the captions name each object's place first
("on the left a red heart and on the right a green circle on a black background").
Pseudo-words (an option of any stage from 3): an object is named, with a given probability, by one of
`PSEUDO_WORDS` rare words, each bound to one fixed look ("a zu017 on the left and a zu203 on the right ..."),
so that a new word, first or second in a prompt, is one more rare name to the model, as on Stable Diffusion.

Reserved for held-out concepts (never drawn by `random_scene`, at any stage): inner rings, and the exact
looks of `CONCEPTS` (shape, texture and its two colours, in either order), so that a concept stays novel
although the world has its parts. Each concept has a superclass from `SHAPES`, and `render_concept` draws
one at a chosen place and background, alone or next to an ordinary object.

Images are rendered 4x supersampled and box-filtered down, float32 HxWx3 in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.15, 0.80),
}
BACKGROUNDS = {
    "black": (0.05, 0.05, 0.05),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
}
# Object centres as fractions of the image (x to the right, y downwards).
POSITIONS = {
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "centre": (0.5, 0.5),
}
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "centre": "in the centre"}
PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))
JITTER = 0.04
SIZE = 0.50  # object extent as a fraction of the image side
SUPERSAMPLE = 4
PATTERNS = ("plain", "stripes", "checks", "dots")
TEXTURED = 0.5  # share of stage-3 objects with a texture
PLACE_FIRST = 0.5  # share of stage-4 captions that name each object's place before it
PSEUDO_WORDS = 256
CELLS = 8  # texture cells across the image (two pixels each at 16 x 16), anchored to the pixel grid


@dataclass(frozen=True)
class Obj:
    """One object: a plain fill or a texture (`pattern` in `colour2` on `colour`); `inner_ring` is reserved for
    concepts."""

    shape: str
    colour: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    pattern: str = "plain"
    colour2: str | None = None
    inner_ring: str | None = None  # colour of a ring drawn inside the object

    @property
    def colours(self) -> str:
        """The object's colours as the probe reads them: "red", or a texture's two joined in name order."""
        return self.colour if self.pattern == "plain" else "+".join(sorted((self.colour, self.colour2 or "")))

    @property
    def look(self) -> tuple[str, str, str]:
        """(shape, colours, pattern): what a caption says of the object and the probe reads back."""
        return self.shape, self.colours, self.pattern

    @property
    def appearance(self) -> tuple[str, str, str, str | None]:
        """The look and the inner ring: all the object shows, wherever it is."""
        return *self.look, self.inner_ring


@dataclass(frozen=True)
class Scene:
    """A full scene: one or two objects on a plain background."""

    objects: tuple[Obj, ...]
    background: str

    def attributes(self) -> dict[str, str]:
        """Ground truth for the probe: shape/colour/pattern/position (suffixed 2 for a second object), background;
        a textured object's colour is its two colours (`Obj.colours`)."""
        out = {"background": self.background}
        for i, o in enumerate(self.objects):
            suffix = "" if i == 0 else str(i + 1)
            out["shape" + suffix] = o.shape
            out["colour" + suffix] = o.colours
            out["pattern" + suffix] = o.pattern
            out["position" + suffix] = o.position
        return out


def describe(obj: Obj, word: str | None = None, place_first: bool = False, placed: bool = True) -> str:
    """Noun phrase for one object, its place after it or, with `place_first`, before it (or, not `placed`, unsaid);
    `word` replaces colour and shape (a concept word)."""
    place = PLACES[obj.position]
    if word is not None:
        noun = f"a {word}"
    else:
        texture = "" if obj.pattern == "plain" else f" with {obj.colour2} {obj.pattern}"
        noun = f"a {obj.colour} {obj.shape}{texture}"
    if not placed:
        return noun
    return f"{place} {noun}" if place_first else f"{noun} {place}"


def caption(scene: Scene, words: tuple[str | None, ...] | None = None, place_first: bool = False,
            placed: bool = True) -> str:
    """The caption that says all of the scene; `words[i]` optionally names object i by a concept word; with
    `place_first` each object's place comes before it ("on the left a red heart ..."); not `placed`, no place is
    said ("a red heart and a blue star on a white background")."""
    words = words or (None,) * len(scene.objects)
    parts = [describe(o, w, place_first, placed) for o, w in zip(scene.objects, words, strict=True)]
    return " and ".join(parts) + f" on a {scene.background} background"


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted."""
    words = {"a", "and", "background", "with"} | {w for p in PLACES.values() for w in p.split()}
    words |= set(SHAPES) | set(COLOURS) | set(BACKGROUNDS) | set(POSITIONS) | set(PATTERNS[1:])
    return sorted(words | set(pseudo_lexicon()))


@cache
def pseudo_lexicon() -> dict[str, Obj]:
    """`PSEUDO_WORDS` rare words ("zu000" ...), each bound to a distinct appearance of the world (at the centre), drawn
    once from a fixed seed among every plain and textured look but the held-out concepts'."""
    looks = [Obj(s, c, "centre") for s in SHAPES for c in COLOURS]
    looks += [Obj(s, c, "centre", pattern=p, colour2=c2) for s in SHAPES for c in COLOURS for p in PATTERNS[1:]
              for c2 in COLOURS if c2 != c]
    looks = [o for o in looks if o.look not in HELD_OUT_LOOKS]
    order = np.random.default_rng(20261207).permutation(len(looks))[:PSEUDO_WORDS]
    return {f"zu{i:03d}": looks[k] for i, k in enumerate(sorted(order))}


def _jitter(rng: np.random.Generator) -> tuple[float, float]:
    dx, dy = rng.uniform(-JITTER, JITTER, size=2)
    return float(dx), float(dy)


def random_object(rng: np.random.Generator, position: str, textured: bool = False, held_out: bool = True) -> Obj:
    """An object of random shape and colour at `position` (with jitter); with `textured`, half of them carry a
    texture in a second colour, drawn again while the look is a held-out concept's (unless `held_out` is off)."""
    while True:
        dx, dy = _jitter(rng)
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        if not textured or rng.random() >= TEXTURED:
            return Obj(shape, colour, position, dx, dy)
        pattern = PATTERNS[1 + rng.integers(len(PATTERNS) - 1)]
        colour2 = [c for c in COLOURS if c != colour][rng.integers(len(COLOURS) - 1)]
        obj = Obj(shape, colour, position, dx, dy, pattern, colour2)
        if not held_out or obj.look not in HELD_OUT_LOOKS:
            return obj


def random_scene(
    rng: np.random.Generator, stage: int = 1, positions: tuple[str, ...] = tuple(POSITIONS), held_out: bool = True
) -> Scene:
    """A random pretraining scene. Stage 2 gives two objects in half of the scenes, stage 3 textures.

    `positions` restricts single-object placements (a curriculum can start with fewer positions); with
    `held_out` off, the concepts' looks may be drawn too (for the probe, which must read them).
    """
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    textured = stage >= 3
    if stage >= 2 and rng.random() < 0.5:
        first, second = PAIRS[rng.integers(len(PAIRS))]
        return Scene((random_object(rng, first, textured, held_out), random_object(rng, second, textured, held_out)),
                     background)
    position = positions[rng.integers(len(positions))]
    return Scene((random_object(rng, position, textured, held_out),), background)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon for polygonal shapes (None for circle), in supersampled pixel units."""
    if shape == "square":
        s = 0.86 * r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = r if k % 2 == 0 else 0.45 * r
            pts.append((cx + rad * math.cos(a), cy + 0.05 * r + rad * math.sin(a)))
        return pts
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 16.5, cy - r * (y + 2.5) / 15.0))
        return pts
    return None


def _mask(shape: str, cx: float, cy: float, r: float, side: int) -> np.ndarray:
    """Binary mask (float32, side x side) of one shape at supersampled resolution."""
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    poly = _outline(shape, cx, cy, r)
    if poly is None:
        draw.ellipse([cx - 0.92 * r, cy - 0.92 * r, cx + 0.92 * r, cy + 0.92 * r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def _fill(obj: Obj, side: int) -> np.ndarray:
    """Object colour per supersampled pixel (side x side x 3): plain or a two-colour texture on the pixel grid
    (cells that straddle pixels would blur into a third colour at 16 x 16)."""
    c1 = np.array(COLOURS[obj.colour], dtype=np.float32)
    if obj.pattern == "plain":
        return np.broadcast_to(c1, (side, side, 3))
    c2 = np.array(COLOURS[obj.colour2 or "yellow"], dtype=np.float32)
    cell = side // CELLS
    yy, xx = np.mgrid[0:side, 0:side] // cell
    if obj.pattern == "checks":
        second = (xx + yy) % 2 == 1
    elif obj.pattern == "stripes":
        second = yy % 2 == 1
    elif obj.pattern == "dots":
        fy, fx = (np.mgrid[0:side, 0:side] % (2 * cell) + 0.5) / cell - 0.5  # offset from the dot's centre
        second = fx**2 + fy**2 < 0.45
    else:
        raise ValueError(f"unknown pattern {obj.pattern!r}")
    return np.where(second[..., None], c2, c1)


def render(scene: Scene, res: int = 16) -> np.ndarray:
    """Render `scene` to a float32 res x res x 3 array in [0, 1]."""
    side = res * SUPERSAMPLE
    img = np.empty((side, side, 3), dtype=np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        px, py = POSITIONS[obj.position]
        cx, cy, r = (px + obj.dx) * side, (py + obj.dy) * side, SIZE / 2 * side
        m = _mask(obj.shape, cx, cy, r, side)[..., None]
        img = img * (1 - m) + _fill(obj, side) * m
        if obj.inner_ring is not None:
            ring = _mask("circle", cx, cy, 0.55 * r, side) - _mask("circle", cx, cy, 0.3 * r, side)
            ring = np.clip(ring, 0, 1)[..., None] * m
            img = img * (1 - ring) + np.array(COLOURS[obj.inner_ring], dtype=np.float32) * ring
    return img.reshape(res, SUPERSAMPLE, res, SUPERSAMPLE, 3).mean(axis=(1, 3))


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Independent generator for item `index` of the stream `seed` (streams are random-access)."""
    return np.random.default_rng([seed, index])


def batch(
    seed: int, index: int, size: int, stage: int = 1, res: int = 16, positions: tuple[str, ...] | None = None,
    colourless: float = 0.0, held_out: bool = True, pseudo: float = 0.0, place_first: float | None = None,
    placeless: float = 0.0,
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Batch `index` of stream `seed`: images (size x 3 x res x res, in [-1, 1]), captions, scenes.

    With `colourless` > 0, each object's colour is left out of the caption with that probability ("a heart on
    the left ..."), so that a shape word alone means the shape in any colour, as a superclass word does; a
    textured object's texture goes with its colours. From stage 4 on, a share `place_first` of the captions (default
    `PLACE_FIRST`) name places first. With `placeless` > 0, a caption says no place with that probability, so that
    where an object goes is the sampler's draw (and a region's, when painted).
    With `pseudo` > 0, each object takes, with that probability, the look of a random pseudo-word, which names it
    (drawn from a stream of their own, so that the scenes' other draws stay those of runs without the option).
    `held_out` as in `random_scene`.
    """
    rng = scene_rng(seed, index)
    scenes = [random_scene(rng, stage, positions or tuple(POSITIONS), held_out) for _ in range(size)]
    named = [(None,) * len(s.objects) for s in scenes]
    if pseudo:
        scenes, named = zip(*(_pseudo_named(s, np.random.default_rng([seed, index, i, 5]), pseudo)
                              for i, s in enumerate(scenes)), strict=True)
    images = np.stack([render(s, res) for s in scenes]).transpose(0, 3, 1, 2) * 2 - 1
    if not colourless and stage < 4 and not pseudo:  # no further draws: the stream of runs before these options
        return images.astype(np.float32), [caption(s) for s in scenes], list(scenes)
    words = [tuple(n or (o.shape if rng.random() < colourless else None) for o, n in zip(s.objects, ns, strict=True))
             for s, ns in zip(scenes, named, strict=True)]
    # drawn after the words, so that the streams of earlier stages stay as they were
    share = PLACE_FIRST if place_first is None else place_first
    first = [stage >= 4 and rng.random() < share for _ in scenes]
    placed = [not placeless or rng.random() >= placeless for _ in scenes]
    captions = [caption(s, w, p, q) for s, w, p, q in zip(scenes, words, first, placed, strict=True)]
    return images.astype(np.float32), captions, list(scenes)


def _pseudo_named(scene: Scene, rng: np.random.Generator, p: float) -> tuple[Scene, tuple[str | None, ...]]:
    """`scene` with each object, with probability `p`, given a random pseudo-word's look; and the words."""
    names = list(pseudo_lexicon())
    words = tuple(names[rng.integers(len(names))] if rng.random() < p else None for _ in scene.objects)
    return named_by(scene, words), words


def named_by(scene: Scene, words: tuple[str | None, ...]) -> Scene:
    """`scene` with object i given the look of the pseudo-word `words[i]` (where not None), at its own place."""
    lexicon = pseudo_lexicon()
    objects = tuple(o if w is None else replace(o, shape=lexicon[w].shape, colour=lexicon[w].colour,
                                                pattern=lexicon[w].pattern, colour2=lexicon[w].colour2)
                    for o, w in zip(scene.objects, words, strict=True))
    return Scene(objects, scene.background)


@dataclass(frozen=True)
class Concept:
    """A held-out object look, never seen in pretraining, with a superclass shape the world knows."""

    superclass: str
    colour: str
    pattern: str = "plain"
    colour2: str | None = None
    inner_ring: str | None = None


CONCEPTS = {
    "checker_heart": Concept("heart", "red", "checks", "yellow"),
    "striped_star": Concept("star", "blue", "stripes", "yellow"),
    "ringed_circle": Concept("circle", "purple", inner_ring="yellow"),
}
HELD_OUT_LOOKS = frozenset(Obj(c.superclass, c.colour, "centre", pattern=c.pattern, colour2=c.colour2).look
                           for c in CONCEPTS.values() if c.pattern != "plain")


def concept_scene(
    concept: Concept, position: str, background: str, seed: int = 0, second: Obj | None = None
) -> Scene:
    """Scene with `concept` at `position` (seeded jitter), optionally beside an ordinary `second` object."""
    dx, dy = _jitter(np.random.default_rng(seed))
    obj = Obj(concept.superclass, concept.colour, position, dx, dy, concept.pattern, concept.colour2,
              concept.inner_ring)
    return Scene((obj,) if second is None else (obj, second), background)


def render_concept(
    concept: Concept | str, position: str = "centre", background: str = "white", seed: int = 0,
    res: int = 16, second: Obj | None = None,
) -> np.ndarray:
    """Render a held-out concept object (float32 res x res x 3 in [0, 1])."""
    if isinstance(concept, str):
        concept = CONCEPTS[concept]
    return render(concept_scene(concept, position, background, seed, second), res)
