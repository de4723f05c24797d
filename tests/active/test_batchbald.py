"""BatchBALD against brute-force enumeration, batchbald_redux and its own sampled estimator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mcdrop.active import bald, batchbald
from mcdrop.active._batchbald import joint_entropies, sample_configurations


def _probs(t: int, n: int, c: int, seed: int, concentration: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.moveaxis(rng.dirichlet(np.full(c, concentration), size=(t, n)), -1, 2)


def _batch_information(p: np.ndarray, batch: list[int]) -> float:
    """I[y_batch; w] by enumerating every class configuration of the batch (naive loops)."""
    t_count, _, c_count = p.shape
    joint = 0.0
    for labels in itertools.product(range(c_count), repeat=len(batch)):
        prob = (
            sum(
                math.prod(p[t, i, y] for i, y in zip(batch, labels, strict=True))
                for t in range(t_count)
            )
            / t_count
        )
        joint -= prob * math.log(prob) if prob > 0 else 0.0
    conditional = sum(
        -sum(p[t, i, y] * math.log(p[t, i, y]) for y in range(c_count) if p[t, i, y] > 0) / t_count
        for i in batch
        for t in range(t_count)
    )
    return joint - conditional


def _greedy_brute_force(p: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    chosen: list[int] = []
    values = [0.0]
    for _ in range(n):
        candidates = [i for i in range(p.shape[1]) if i not in chosen]
        scored = [(_batch_information(p, [*chosen, i]), -i) for i in candidates]
        value, neg_index = max(scored)
        chosen.append(-neg_index)
        values.append(value)
    return chosen, list(np.diff(values))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_batchbald_is_the_brute_force_greedy_choice(seed: int) -> None:
    p = _probs(t=6, n=7, c=3, seed=seed)
    result = batchbald(p, 4)
    indices, gains = _greedy_brute_force(p, 4)
    assert result.tolist() == indices
    assert result.n_exact == 4
    np.testing.assert_allclose(result.scores.numpy(), gains, rtol=1e-10, atol=1e-12)
    # The gains of a greedy batch shrink (mutual information is submodular here) and stay >= 0.
    assert np.all(result.scores.numpy() >= -1e-12)


def test_batch_of_one_is_the_argmax_of_bald() -> None:
    p = _probs(t=20, n=50, c=5, seed=3)
    result = batchbald(p, 1)
    scores = bald(p)
    assert result.tolist() == [int(scores.argmax())]
    torch.testing.assert_close(result.scores[0], scores.max(), rtol=1e-12, atol=1e-14)


def test_equals_batchbald_redux_where_it_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    redux = pytest.importorskip("batchbald_redux.batchbald")
    # Its chunking helper (toma) runs gc.collect() around every chunk: seconds in a test run.
    monkeypatch.setattr("toma.gc_cuda", lambda: None)
    p = _probs(t=12, n=30, c=3, seed=4, concentration=1.0)
    log_probs = torch.from_numpy(np.log(p)).permute(1, 0, 2).contiguous()  # (N, K, C)
    theirs = redux.get_batchbald_batch(log_probs, 5, num_samples=10**6, dtype=torch.float64)
    ours = batchbald(p, 5, n_configurations=10**6)
    assert ours.tolist() == theirs.indices
    # Theirs are the mutual information of the growing batch; ours its increments.
    np.testing.assert_allclose(ours.scores.cumsum(0).numpy(), theirs.scores, rtol=1e-9)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_shared_masks_avoid_duplicates_where_top_k_bald_takes_them(seed: int) -> None:
    distinct = _probs(t=40, n=10, c=4, seed=seed, concentration=0.3)
    pool = np.repeat(distinct, 3, axis=1)  # every example three times, same networks
    top_k = bald(pool).topk(6).indices.numpy() // 3
    assert len(set(top_k.tolist())) < 6  # top-k BALD takes copies of the best examples
    chosen = batchbald(pool, 6, seed=0).indices.numpy() // 3
    assert len(set(chosen.tolist())) == 6  # BatchBALD takes one of each


def test_with_independent_masks_batchbald_takes_duplicates_too() -> None:
    """Why the masks must be shared: with a fresh mask per example and sample the copies of an
    example look like independent examples, and BatchBALD behaves like top-k BALD."""
    rng = np.random.default_rng(8)
    pool = np.repeat(_probs(t=40, n=10, c=4, seed=8, concentration=0.3), 3, axis=1)
    independent = np.stack([pool[rng.permutation(40), i] for i in range(30)], axis=1)
    chosen = batchbald(independent, 6, seed=0).indices.numpy() // 3
    assert len(set(chosen.tolist())) < 6


def test_sampled_joint_entropy_is_within_its_monte_carlo_error_of_exact() -> None:
    p = torch.from_numpy(_probs(t=10, n=12, c=4, seed=9, concentration=0.7))
    batch = [0, 1, 2, 3]  # 4^4 = 256 configurations, exact is cheap
    exact_configs = torch.ones(1, 10, dtype=torch.float64)
    for i in batch:
        exact_configs = (exact_configs[:, None, :] * p[:, i, :].T[None]).reshape(-1, 10)
    exact = joint_entropies(exact_configs, None, p)
    brute = [_batch_information(p.numpy(), [*batch, i]) for i in (4, 5)]
    conditional = [
        sum(-(p[:, j] * p[:, j].log()).sum(1).mean().item() for j in [*batch, i]) for i in (4, 5)
    ]
    np.testing.assert_allclose(exact[4:6].numpy(), np.add(brute, conditional), rtol=1e-10)

    gen = torch.Generator().manual_seed(0)
    configs, weights = sample_configurations(p[:, batch, :], 300, gen)
    sampled = joint_entropies(configs, weights, p)
    # Standard error of the importance-weighted mean, from the per-configuration terms.
    joint = torch.einsum("mt,tnc->nmc", configs, p) / 10
    terms = -torch.special.xlogy(joint, joint).sum(2) * weights
    standard_error = terms.std(1) / math.sqrt(terms.shape[1])
    z = (sampled - exact) / standard_error
    assert torch.all(z.abs() < 4.5), z
    assert torch.all(standard_error < 0.05)  # the bound is tight enough to catch a bias


def test_sampled_mode_is_reproducible_and_close_to_exact() -> None:
    p = _probs(t=16, n=40, c=3, seed=10, concentration=0.3)
    a = batchbald(p, 6, n_configurations=20, seed=1)
    b = batchbald(p, 6, n_configurations=20, seed=1)
    assert a.n_exact == 3  # 3^3 = 27 > 20 configurations from the fourth step on
    assert a.tolist() == b.tolist()
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    exact = batchbald(p, 6, n_configurations=10**4)
    assert exact.n_exact == 6
    assert a.tolist()[:3] == exact.tolist()[:3]


def _batch_information_vectorised(p: np.ndarray, batch: list[int]) -> float:
    """I[y_batch; w] from the full (T, C^k) table of configurations, built with outer products."""
    table = np.ones((p.shape[0], 1))
    for i in batch:
        table = (table[:, :, None] * p[:, i, None, :]).reshape(p.shape[0], -1)
    joint = table.mean(0)
    entropy = -np.sum(joint[joint > 0] * np.log(joint[joint > 0]))
    conditional = sum(-np.sum(p[:, i] * np.log(p[:, i]), axis=1).mean() for i in batch)
    return float(entropy - conditional)


def test_sampled_batch_information_is_close_to_its_enumeration() -> None:
    p = _probs(t=16, n=40, c=6, seed=10, concentration=0.3)
    exact = batchbald(p, 6)
    assert exact.n_exact == 6
    np.testing.assert_allclose(
        float(exact.scores.sum()), _batch_information_vectorised(p, exact.tolist()), rtol=1e-10
    )
    errors = []
    for seed in range(4):
        sampled = batchbald(p, 6, n_configurations=2000, seed=seed)
        assert sampled.n_exact == 5  # 6^5 > 2000: the last step samples 2000 configurations
        assert sampled.tolist()[:5] == exact.tolist()[:5]
        truth = _batch_information_vectorised(p, sampled.tolist())
        errors.append(float(sampled.scores.sum()) - truth)
    # A few standard errors (about 0.03 nats here, see the test above for the rigorous bound).
    assert max(abs(e) for e in errors) < 0.12, errors
    assert abs(np.mean(errors)) < 0.06, errors


def test_the_order_of_the_networks_does_not_matter() -> None:
    p = _probs(t=8, n=15, c=3, seed=11)
    perm = np.random.default_rng(0).permutation(8)
    a, b = batchbald(p, 4), batchbald(p[perm], 4)
    assert a.tolist() == b.tolist()
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("probs", "n", "kwargs", "error", "message"),
    [
        (_probs(2, 5, 3, 0), 6, {}, ValueError, r"`n` to be at most .* \(5\), but got 6"),
        (_probs(2, 5, 3, 0), 0, {}, ValueError, r"`n` to be an integer >= 1"),
        (_probs(2, 5, 3, 0), 2.0, {}, TypeError, r"`n`"),
        (_probs(1, 5, 3, 0), 2, {}, ValueError, r"at least 2 Monte Carlo samples.*batchbald"),
        (_probs(2, 5, 3, 0), 2, {"n_configurations": 0}, ValueError, r"`n_configurations`"),
        (_probs(2, 5, 3, 0), 2, {"seed": -1}, ValueError, r"`seed`"),
        (np.ones((2, 5, 3, 4)) / 3, 2, {}, ValueError, r"shape \(T, N, C\)"),
    ],
)
def test_bad_input_is_refused(probs, n, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        batchbald(probs, n, **kwargs)
