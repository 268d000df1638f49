"""The streamed second moment C, its inverse, fingerprint and on-disk cache."""

import pytest
import torch

from perfusion_core import PerfusionError, SecondMoment, second_moment
from perfusion_core.second_moment import cached_second_moment, weights_key


def test_streaming_equals_the_direct_moment():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 7, 16, generator=g) for _ in range(5)]
    captions = [f"caption {k}" for k in range(15)]
    moment = second_moment(lambda prompts: batches[int(prompts[0].split()[1]) // 3], captions, batch_size=3)
    flat = torch.cat(batches).reshape(-1, 16).double()
    assert moment.count == flat.shape[0]
    assert torch.allclose(moment.matrix, flat.T @ flat / flat.shape[0])
    assert torch.allclose(moment.inverse() @ moment.matrix, torch.eye(16, dtype=torch.float64), atol=1e-3)


def test_fingerprint_survives_round_off_and_scale_is_irrelevant_to_the_cache(tmp_path):
    x = torch.randn(100, 8, dtype=torch.float64)
    a, b = SecondMoment(8), SecondMoment(8)
    a.update(x)
    b.update(x * (1 + 1e-12))
    assert a.fingerprint == b.fingerprint
    calls = []

    def compute():
        calls.append(1)
        return a

    first = cached_second_moment("key1", compute, tmp_path)
    second = cached_second_moment("key1", compute, tmp_path)
    assert calls == [1] and torch.equal(first.matrix, second.matrix)
    (tmp_path / "second_moment-key1.safetensors").write_bytes(b"garbage")
    cached_second_moment("key1", compute, tmp_path)  # a damaged cache entry is recomputed
    assert calls == [1, 1]


def test_cache_key_depends_on_weights_and_layer():
    module = torch.nn.Linear(4, 4)
    key = weights_key([module], "last", ["a cat"])
    assert key != weights_key([module], "penultimate", ["a cat"])
    with torch.no_grad():
        module.weight[0, 0] += 1
    assert key != weights_key([module], "last", ["a cat"])


def test_bad_input_is_refused():
    with pytest.raises(PerfusionError, match="caption"):
        second_moment(lambda p: torch.zeros(1, 1, 4), [])
    moment = SecondMoment(4)
    with pytest.raises(PerfusionError, match="NaN"):
        moment.update(torch.full((2, 4), float("nan")))
    with pytest.raises(PerfusionError, match="width"):
        moment.update(torch.zeros(2, 5))
