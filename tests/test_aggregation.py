"""Tests for atr_core.model.aggregation: shapes, padding invariance (project decision 2), the formulas."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from atr_core.errors import InputError
from atr_core.model.aggregation import (
    AGGREGATIONS,
    LSTMPool,
    MaxPool,
    MeanPool,
    NetRVLAD,
    NetVLAD,
    build_aggregation,
)

K, H = 3, 5


def make(name: str, dim: int, use_mask: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_aggregation(name, dim, clusters=K, hidden=H, use_mask=use_mask)
    for mod in m.modules():  # non-trivial BatchNorm affine and running statistics
        if isinstance(mod, torch.nn.BatchNorm1d):
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def random_batch(gen: torch.Generator, b: int, d: int, lengths: list[int], n: int, garbage: bool):
    """(b, n, d) with valid prefixes of ``lengths`` and zero or huge random values in the padding."""
    x = torch.randn(b, n, d, generator=gen)
    mask = torch.zeros(b, n)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    pad = (torch.rand(b, n, d, generator=gen) - 0.5) * 2e4 if garbage else torch.zeros(b, n, d)
    return torch.where(mask.bool().unsqueeze(-1), x, pad), mask


def out_dim(name: str, d: int) -> int:
    return {"mean": d, "max": d, "lstm": H, "netvlad": d * K, "netrvlad": d * K}[name]


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_shapes_and_finite(name):
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        b, d = int(torch.randint(2, 6, (1,), generator=gen)), int(torch.randint(1, 7, (1,), generator=gen))
        n = int(torch.randint(1, 9, (1,), generator=gen))
        lengths = torch.randint(1, n + 1, (b,), generator=gen).tolist()
        x, mask = random_batch(gen, b, d, lengths, n, garbage=True)
        m = make(name, d)
        assert m.out_dim == out_dim(name, d)
        for train in (True, False):
            m.train(train)
            y = m(x, mask)
            assert y.shape == (b, m.out_dim) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", AGGREGATIONS)
@pytest.mark.parametrize("train", [True, False])
def test_padding_never_changes_the_output(name, train):
    """Same valid rows, different padding length and garbage: same output and same BN running stats."""
    gen = torch.Generator().manual_seed(2)
    d = 4
    for case in range(20):
        b = int(torch.randint(2, 6, (1,), generator=gen))
        n1 = int(torch.randint(1, 8, (1,), generator=gen))
        n2 = n1 + int(torch.randint(1, 6, (1,), generator=gen))
        lengths = torch.randint(1, n1 + 1, (b,), generator=gen).tolist()
        lengths[0] = n1
        x1, mask1 = random_batch(gen, b, d, lengths, n1, garbage=case % 2 == 0)
        x2 = (torch.rand(b, n2, d, generator=gen) - 0.5) * 2e4
        x2[:, :n1] = x1
        mask2 = torch.zeros(b, n2)
        mask2[:, :n1] = mask1
        x2 = torch.where(mask2.bool().unsqueeze(-1), x2, x2 * 7 + 3)
        if case % 5 == 0:
            x2[~mask2.bool()] = float("nan")
        m1 = make(name, d, seed=case).train(train)
        m2 = copy.deepcopy(m1)
        y1, y2 = m1(x1, mask1), m2(x2, mask2.bool() if case % 2 else mask2)
        torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
        for (k, v1), (_, v2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
            torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_eval_output_does_not_depend_on_batch_mates(name):
    gen = torch.Generator().manual_seed(3)
    d = 3
    m = make(name, d).eval()
    for _ in range(15):
        b, n = int(torch.randint(2, 6, (1,), generator=gen)), int(torch.randint(2, 9, (1,), generator=gen))
        lengths = torch.randint(1, n + 1, (b,), generator=gen).tolist()
        x, mask = random_batch(gen, b, d, lengths, n, garbage=True)
        together = m(x, mask)
        for i, length in enumerate(lengths):
            alone = m(x[i : i + 1, :length], torch.ones(1, length))
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mean", "max", "netvlad", "netrvlad"])
def test_non_prefix_masks(name):
    """Modules other than the LSTM accept valid rows anywhere in the sequence."""
    gen = torch.Generator().manual_seed(4)
    d = 3
    for case in range(10):
        b, n = 4, 7
        mask = (torch.rand(b, n, generator=gen) > 0.4).float()
        mask[:, case % n] = 1
        x = torch.randn(b, n, d, generator=gen)
        x_garbage = torch.where(mask.bool().unsqueeze(-1), x, torch.full_like(x, 1e4))
        order = torch.argsort(-mask, dim=1, stable=True)  # valid rows first, same relative order
        x_packed = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, d))
        mask_packed = torch.gather(mask, 1, order)
        m1 = make(name, d, seed=case).train(case % 2 == 0)
        m2 = copy.deepcopy(m1)
        torch.testing.assert_close(m1(x_garbage, mask), m2(x_packed, mask_packed), rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_with_nan_padding():
    d = 3
    x = torch.randn(3, 5, d)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    x[mask == 0] = float("nan")
    for name in AGGREGATIONS:
        m = make(name, d).train()
        xi = x.clone().requires_grad_(True)
        m(xi, mask).square().sum().backward()
        for p in m.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert torch.isfinite(xi.grad[mask.bool()]).all()


# --- the formulas, against direct numpy computations -----------------------------------------------


def np_batch_norm(z, bn: torch.nn.BatchNorm1d, train: bool):
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    if train:
        mu, var = z.mean(axis=0), z.var(axis=0)
    else:
        mu, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    return (z - mu) / np.sqrt(var + bn.eps) * gamma + beta


def np_vlad(m: NetRVLAD, x: np.ndarray, mask: np.ndarray, train: bool, masked: bool, centres: bool):
    """Reference 4.1 / 4.2 written out with loops over clips, clusters and dims."""
    b, n, d = x.shape
    c = m.cluster_weights.detach().double().numpy()
    rows = mask.reshape(-1) > 0 if masked else np.ones(b * n, bool)
    z = x.reshape(b * n, d) @ c
    zn = np.zeros_like(z)
    zn[rows] = np_batch_norm(z[rows], m.batch_norm, train)
    a = np.exp(zn - zn.max(axis=1, keepdims=True))
    a = a / a.sum(axis=1, keepdims=True)
    a[~rows] = 0.0
    a = a.reshape(b, n, -1)
    out = np.zeros((b, d * m.clusters))
    for i in range(b):
        v = np.zeros((d, m.clusters))
        for k in range(m.clusters):
            for j in range(n):
                v[:, k] += a[i, j, k] * x[i, j]
            if centres:
                v[:, k] -= a[i, :, k].sum() * m.centres.detach().double().numpy()[0, :, k]
            v[:, k] /= max(np.linalg.norm(v[:, k]), 1e-12)
        flat = np.array([v[dd, k] for dd in range(d) for k in range(m.clusters)])  # d-major
        out[i] = flat / max(np.linalg.norm(flat), 1e-12)
    return out


@pytest.mark.parametrize("cls", [NetRVLAD, NetVLAD])
@pytest.mark.parametrize("use_mask", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_vlad_equals_numpy(cls, use_mask, train):
    rng = np.random.default_rng(5)
    for case in range(8):
        b, n, d = int(rng.integers(2, 5)), int(rng.integers(2, 6)), int(rng.integers(1, 5))
        lengths = rng.integers(1, n + 1, size=b)
        mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.float64)
        x = rng.normal(size=(b, n, d)) * mask[..., None]  # authors' zero padding
        torch.manual_seed(case)
        m = cls(d, K, use_mask=use_mask)
        with torch.no_grad():
            m.batch_norm.weight.uniform_(0.5, 1.5)
            m.batch_norm.bias.uniform_(-0.5, 0.5)
            m.batch_norm.running_mean.uniform_(-0.5, 0.5)
            m.batch_norm.running_var.uniform_(0.5, 2.0)
        expected = np_vlad(m, x, mask, train, masked=use_mask, centres=cls is NetVLAD)
        m = m.double().train(train)
        got = m(torch.from_numpy(x), torch.from_numpy(mask)).detach().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_netrvlad_init_and_dims():
    torch.manual_seed(0)
    m = NetRVLAD(2048, 12)
    assert m.out_dim == 24576 and m.cluster_weights.shape == (2048, 12)
    assert abs(m.cluster_weights.std().item() * np.sqrt(2048) - 1.0) < 0.05
    assert abs(m.cluster_weights.mean().item()) < 0.01
    assert not hasattr(m, "centres") and isinstance(m.batch_norm, torch.nn.BatchNorm1d)
    assert m.batch_norm.num_features == 12
    assert NetRVLAD(300, 20).out_dim == 6000
    v = NetVLAD(300, 20)
    assert v.centres.shape == (1, 300, 20)


def test_unmasked_authors_behaviour_differs_in_train_mode():
    """use_mask=False: zero padding enters the BN statistics (reference 4.1), so outputs change."""
    gen = torch.Generator().manual_seed(6)
    x, mask = random_batch(gen, 3, 4, [2, 5, 1], 5, garbage=False)
    masked, unmasked = make("netrvlad", 4), make("netrvlad", 4, use_mask=False)
    unmasked.load_state_dict(masked.state_dict())
    # eval mode: BN is per-row, zero rows add nothing: identical
    torch.testing.assert_close(masked.eval()(x, mask), unmasked.eval()(x, mask))
    assert not torch.allclose(masked.train()(x, mask), unmasked.train()(x, mask))
    assert not torch.allclose(masked.batch_norm.running_mean, unmasked.batch_norm.running_mean)


def test_mean_pool_formula():
    rng = np.random.default_rng(7)
    for _ in range(30):
        b, n, d = int(rng.integers(1, 5)), int(rng.integers(1, 7)), int(rng.integers(1, 6))
        x = rng.normal(size=(b, n, d))
        mask = (rng.random((b, n)) > 0.3).astype(np.float64)
        expected = np.zeros((b, d))
        for i in range(b):
            rows = [x[i, j] / (np.linalg.norm(x[i, j]) + 1e-8) for j in range(n) if mask[i, j]]
            mean = np.sum(rows, axis=0) / max(len(rows), 1) if rows else np.zeros(d)
            expected[i] = mean / max(np.linalg.norm(mean), 1e-12)
        got = MeanPool(d)(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_max_pool_formula_masked_and_unmasked():
    rng = np.random.default_rng(8)
    for _ in range(30):
        b, n, d = int(rng.integers(1, 5)), int(rng.integers(1, 7)), int(rng.integers(1, 6))
        x = rng.normal(size=(b, n, d)) - 1.0  # mostly negative: padding zeros would win an unmasked max
        mask = (rng.random((b, n)) > 0.3).astype(np.float64)
        mask[:, 0] = 1
        x_zero_pad = x * mask[..., None]
        expected = np.stack([x[i][mask[i] > 0].max(axis=0) for i in range(b)])
        got = MaxPool(d)(torch.from_numpy(x_zero_pad), torch.from_numpy(mask)).numpy()
        np.testing.assert_array_equal(got, expected)
        unmasked = MaxPool(d, use_mask=False)(torch.from_numpy(x_zero_pad), torch.from_numpy(mask)).numpy()
        np.testing.assert_array_equal(unmasked, x_zero_pad.max(axis=1))
    empty = MaxPool(2)(torch.randn(2, 3, 2), torch.tensor([[0.0, 0, 0], [1, 0, 0]]))
    assert (empty[0] == 0).all() and torch.isfinite(empty).all()


def test_lstm_pool_is_mean_of_unit_hidden_states_of_each_unpadded_sequence():
    gen = torch.Generator().manual_seed(9)
    d = 3
    m = make("lstm", d)
    assert isinstance(m, LSTMPool) and m.lstm.hidden_size == H and m.lstm.num_layers == 1
    assert not m.lstm.bidirectional and m.lstm.batch_first
    for _ in range(10):
        lengths = torch.randint(1, 7, (4,), generator=gen).tolist()
        x, mask = random_batch(gen, 4, d, lengths, max(lengths), garbage=True)
        got = m(x, mask)
        for i, length in enumerate(lengths):
            hs, _ = m.lstm(x[i : i + 1, :length])
            unit = hs[0] / (hs[0].norm(dim=-1, keepdim=True) + 1e-8)
            expected = torch.nn.functional.normalize(unit.mean(dim=0), dim=0)
            torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-6)


def test_build_aggregation():
    assert isinstance(build_aggregation("netrvlad", 8, 2), NetRVLAD)
    assert type(build_aggregation("netvlad", 8, 2)) is NetVLAD
    assert isinstance(build_aggregation("mean", 8), MeanPool)
    assert build_aggregation("max", 8, use_mask=False).use_mask is False
    assert build_aggregation("lstm", 8, hidden=4).out_dim == 4
    with pytest.raises(InputError, match="unknown aggregation 'gru'"):
        build_aggregation("gru", 8)
    with pytest.raises(InputError, match="clusters"):
        build_aggregation("netrvlad", 8, 0)
    with pytest.raises(ValueError, match="mask shape"):
        build_aggregation("mean", 2)(torch.zeros(2, 3, 2), torch.ones(2, 4))
