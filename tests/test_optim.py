"""ChunkedRMSprop: torch's RMSprop arithmetic in cache-sized slices, bit for bit."""

import copy

import pytest
import torch

from experiments.common import optim


def _params(seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = [(300, 70), (5,), (1000,), (7, 3, 11)]          # sizes that are not multiples of the chunk
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _run(cls, steps: int, chunk: int, monkeypatch, **kw):
    monkeypatch.setattr(optim, "CHUNK", chunk)
    ps = _params(0)
    opt = cls(ps, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        opt.step()
    return ps, opt


@pytest.mark.parametrize("chunk", [64, 1000, 1 << 16])
def test_chunked_update_equals_torch_rmsprop_bit_for_bit(chunk, monkeypatch):
    ref, ref_opt = _run(torch.optim.RMSprop, 5, chunk, monkeypatch, lr=1e-3, alpha=0.9, eps=1e-6)
    got, got_opt = _run(optim.ChunkedRMSprop, 5, chunk, monkeypatch, lr=1e-3, alpha=0.9, eps=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(ref_opt.state[a]["square_avg"], got_opt.state[b]["square_avg"])
        assert float(ref_opt.state[a]["step"]) == float(got_opt.state[b]["step"]) == 5


def test_state_dict_moves_between_torch_and_chunked(monkeypatch):
    ref, ref_opt = _run(torch.optim.RMSprop, 3, 100, monkeypatch, lr=1e-2)
    ps = _params(0)
    resumed = optim.ChunkedRMSprop(ps, lr=1e-2)
    with torch.no_grad():
        for p, r in zip(ps, ref, strict=True):
            p.copy_(r)
    resumed.load_state_dict(copy.deepcopy(ref_opt.state_dict()))   # load_state_dict shares tensors
    for p, r in zip(ps, ref, strict=True):
        p.grad = torch.ones_like(p)
        r.grad = torch.ones_like(r)
    resumed.step()
    ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, ps, strict=True))


def test_options_outside_the_plain_case_fall_back_to_torch(monkeypatch):
    for kw in ({"momentum": 0.9}, {"centered": True}, {"weight_decay": 0.1}):
        ref, _ = _run(torch.optim.RMSprop, 3, 64, monkeypatch, lr=1e-3, **kw)
        got, _ = _run(optim.ChunkedRMSprop, 3, 64, monkeypatch, lr=1e-3, **kw)
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True)), kw


def test_a_chunked_step_moves_the_weights():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = optim.ChunkedRMSprop([p], lr=0.1)
    p.grad = torch.ones(10)
    opt.step()
    # first step: v = 0.01 g², so p = -lr g / (0.1 |g| + eps) = -1 for lr 0.1
    assert torch.allclose(p.detach(), torch.full((10,), -1.0), atol=1e-6)
