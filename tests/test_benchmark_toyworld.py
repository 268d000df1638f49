"""The toy-world benchmark's scoring, on scenes the generator renders exactly as prompted."""

import numpy as np
import pytest
import torch

from benchmarks.toyworld import (
    COMPOSITION_PAIRS,
    COMPOSITION_SEEDS,
    FRONT_CONCEPTS,
    Scorer,
    dominated,
    eval_scenes,
    gain_at_equal_fidelity,
    goals,
    pair_scenes,
    plot_fronts,
)
from toyworld import world


def _rendered(scenes, recolour: str | None = None, texture: tuple[str, str] | None = None) -> torch.Tensor:
    images = []
    for item in scenes:
        objects = list(item.scene.objects)
        if recolour:  # the superclass in a plain colour, or with a texture (pattern, colour), not the concept's look
            o = objects[0]
            pattern, colour2 = texture or ("plain", None)
            objects[0] = world.Obj(o.shape, recolour, o.position, o.dx, o.dy, pattern, colour2)
        images.append(world.render(world.Scene(tuple(objects), item.scene.background)))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", ["checker_heart", "ringed_circle"])
def test_scores_of_exact_renders_and_of_a_plain_superclass(name):
    concept, scorer = world.CONCEPTS[name], Scorer()
    scenes = eval_scenes(concept)
    assert "hugsy on the left" in scenes[0].prompt("hugsy")
    assert eval_scenes(concept, place_first=True)[0].prompt("hugsy").startswith("on the left a hugsy")
    exact = scorer.score(_rendered(scenes), scenes, concept)
    plain = scorer.score(_rendered(scenes, recolour="green"), scenes, concept)
    assert exact["concept_fidelity"] > 0.95 and exact["prompt_fidelity"] > 0.95 and exact["concept_present"] > 0.9
    # a plain green superclass where the prompt says: prompt followed, concept not reproduced
    assert plain["prompt_fidelity"] > 0.95 and plain["concept_present"] < 0.05
    # the concept's colours in another texture are not the concept either
    striped = scorer.score(_rendered(scenes, recolour=concept.colour, texture=("stripes", "yellow")), scenes, concept)
    assert striped["prompt_fidelity"] > 0.95 and striped["concept_present"] < 0.05
    assert plain["concept_fidelity"] < exact["concept_fidelity"] - 0.05
    # the concept's checks or ring keep their spread of colours; a flat colour has none
    assert exact["pattern_contrast"] > 0.9 and plain["pattern_contrast"] < 0.2


@pytest.mark.parametrize("names, seeds", [(FRONT_CONCEPTS, (0, 1, 2)), *((pair, COMPOSITION_SEEDS) for pair in (
    *COMPOSITION_PAIRS, COMPOSITION_PAIRS[0][::-1]))])
def test_two_concepts_present_in_exact_renders_and_absent_in_plain_ones(names, seeds):
    scenes, concepts = pair_scenes(names, seeds), tuple(world.CONCEPTS[name] for name in names)
    assert len(scenes) == 12 * len(seeds) and scenes[0].scene.objects[0].shape == concepts[0].superclass
    scorer = Scorer()
    assert scorer.both_present(_rendered(scenes), scenes, concepts) > 0.9
    assert scorer.both_present(_rendered(scenes, recolour="green"), scenes, concepts) < 0.05


def test_front_comparisons(tmp_path):
    front = [(0.6, 0.9), (0.7, 0.8), (0.8, 0.6)]
    assert dominated((0.65, 0.7), front) and not dominated((0.9, 0.5), front) and not dominated((0.7, 0.8), front)
    assert gain_at_equal_fidelity(front, [(p[0], p[1] - 0.1) for p in front]) == pytest.approx(0.1)
    assert gain_at_equal_fidelity(front, [(0.9, 0.5), (0.95, 0.4)]) is None
    points = {"perfusion": [{"knob": 0.5, "concept_fidelity": 0.7, "prompt_fidelity": 0.8}],
              "textual_inversion": [{"concept_fidelity": 0.6, "prompt_fidelity": 0.9}]}
    plot_fronts(points, tmp_path / "front.png")
    assert (tmp_path / "front.png").stat().st_size > 1000


def test_each_lock_is_judged_painted_on_the_pair_it_is_judged_on_unpainted():
    order = {"efficiency": 1.0, "both_present": 1.0, "prompt_fidelity": 1.0}
    pair = {lock: {"first": order, "second": {**order, "both_present": 0.5}} for lock in ("local", "global")}
    five_views = {"perfusion": {"0.75": 0.95}, "perfusion_global": {"0.75": 0.2}, "perfusion_context": {"0.75": 0.0},
                  "overhead": 1.01}
    figures = {"composition": {" + ".join(FRONT_CONCEPTS): {**pair, "context": {"first": order, "second": order}}},
               "regions_both_present": five_views,
               "regions_both_present_companion_training": {"perfusion_context": {"0.75": 0.9}, "overhead": 2.0},
               "perfusion_dominates_ti": False, "perfusion_context_dominates_ti": True,
               "keylock_prompt_gain_same_beta": -0.01}
    assert goals(figures) == {"unpainted_local": False, "unpainted_global": False, "unpainted_context": True,
                              "painted_local": True, "painted_global": False, "painted_context": True,
                              "painted_overhead": True, "front_dominates_ti_local": False,
                              "front_dominates_ti_context": True, "keylock_beats_trained_keys": False}
