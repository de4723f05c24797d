"""``acquire`` on models: the same choice as the scores on kept samples, any pool form, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mcdrop
from mcdrop.active import (
    acquire,
    bald,
    batchbald,
    entropy,
    epig,
    margin,
    mean_std,
    variation_ratio,
)
from mcdrop.active._acquire import split_seed

SCORE_FUNCTIONS = {
    "bald": bald,
    "entropy": entropy,
    "margin": margin,
    "mean_std": mean_std,
    "variation_ratio": variation_ratio,
}


def _classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4)).eval()
    with torch.no_grad():
        model[3].weight.mul_(4.0)  # a confident, varied head: scores that differ
    return model


class _Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 16, 3, padding=1)
        self.drop = nn.Dropout2d(0.4)
        self.head = nn.Conv2d(16, 3, 1)
        with torch.no_grad():
            self.head.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.conv(x))))


POOL = torch.randn(120, 5, generator=torch.Generator().manual_seed(2))
LABELS = torch.randint(0, 4, (120,), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", sorted(SCORE_FUNCTIONS))
def test_acquire_takes_the_top_scores_of_the_sampled_probabilities(method: str) -> None:
    model = _classifier()
    chosen = acquire(model, POOL, 7, method=method, n_samples=30, seed=5, batch_size=40)
    # The same passes, kept: acquire's seed for them is the first derived from its seed.
    kept = mcdrop.predict_with_uncertainty(
        model, POOL, n_samples=30, seed=split_seed(5)[0], keep_samples=True, batch_size=40
    )
    scores = SCORE_FUNCTIONS[method](kept.samples)
    assert scores.std() > 1e-3
    order = torch.sort(scores, descending=True, stable=True).indices[:7]
    assert chosen.tolist() == order.tolist()
    torch.testing.assert_close(chosen.scores, scores[order], rtol=1e-6, atol=1e-7)
    assert chosen.method == method


def test_least_confidence_and_a_seed_reproduce() -> None:
    model = _classifier()
    a = acquire(model, POOL, 10, method="least_confidence", seed=1, n_samples=20)
    b = acquire(model, POOL, 10, method="least_confidence", seed=1, n_samples=20)
    assert a.tolist() == b.tolist()
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    assert torch.all(a.scores[:-1] >= a.scores[1:])


def test_tensors_datasets_and_dataloaders_give_the_same_choice() -> None:
    model = _classifier()
    kwargs = {"n_samples": 20, "seed": 0}
    from_tensor = acquire(model, POOL, 5, batch_size=32, **kwargs)
    from_dataset = acquire(model, TensorDataset(POOL, LABELS), 5, batch_size=32, **kwargs)
    loader = DataLoader(TensorDataset(POOL, LABELS), batch_size=32)
    from_loader = acquire(model, loader, 5, **kwargs)
    from_list = acquire(model, [POOL[:32], POOL[32:64], POOL[64:96], POOL[96:]], 5, **kwargs)
    for other in (from_dataset, from_loader, from_list):
        assert other.tolist() == from_tensor.tolist()
        torch.testing.assert_close(other.scores, from_tensor.scores, rtol=0, atol=0)


def test_stochastic_acquisition_draws_from_the_scores() -> None:
    model = _classifier()
    a = acquire(model, POOL, 8, stochastic="power", seed=3, n_samples=20)
    b = acquire(model, POOL, 8, stochastic="power", seed=3, n_samples=20)
    assert a.method == "power-bald" and a.tolist() == b.tolist()
    top = acquire(model, POOL, 8, seed=3, n_samples=20)
    assert a.tolist() != top.tolist()
    # The drawn examples carry their BALD scores.
    lookup = dict(
        zip(
            acquire(model, POOL, 120, seed=3, n_samples=20).tolist(),
            acquire(model, POOL, 120, seed=3, n_samples=20).scores.tolist(),
            strict=True,
        )
    )
    np.testing.assert_allclose(a.scores.numpy(), [lookup[i] for i in a.tolist()], rtol=1e-12)


def test_random_acquisition_is_uniform_and_needs_no_passes() -> None:
    counts = np.zeros(10)
    for seed in range(400):
        chosen = acquire(None, torch.zeros(10, 3), 2, method="random", seed=seed)  # type: ignore[arg-type]
        assert len(set(chosen.tolist())) == 2
        counts[chosen.tolist()] += 1
    import scipy.stats

    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_segmentation_scores_are_reduced_over_pixels() -> None:
    model = _Segmenter().eval()
    images = torch.randn(12, 2, 6, 6, generator=torch.Generator().manual_seed(4))
    kept = mcdrop.predict_with_uncertainty(
        model, images, n_samples=16, seed=split_seed(9)[0], keep_samples=True
    )
    per_pixel = bald(kept.samples, reduction=None)
    assert per_pixel.shape == (12, 6, 6)
    for reduction in ("mean", "max", "sum"):
        chosen = acquire(model, images, 4, n_samples=16, seed=9, reduction=reduction)
        expected = getattr(per_pixel.flatten(1), "amax" if reduction == "max" else reduction)(1)
        order = torch.sort(expected, descending=True, stable=True).indices[:4]
        assert chosen.tolist() == order.tolist(), reduction


def test_the_global_random_streams_are_left_alone() -> None:
    model = _classifier()
    state = torch.get_rng_state()
    acquire(model, POOL, 3, seed=0, n_samples=10, stochastic="softmax")
    assert torch.equal(torch.get_rng_state(), state)


def _confident_classifier() -> nn.Module:
    model = _classifier()
    with torch.no_grad():
        model[3].weight.mul_(4.0)  # each network nearly one-hot: copies add almost nothing
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_batchbald_is_batchbald_of_the_shared_mask_samples(seed: int) -> None:
    model = _classifier()
    chosen = acquire(model, POOL, 5, method="batchbald", n_samples=20, seed=seed, batch_size=50)
    mc_seed, choice_seed = split_seed(seed)
    kept = mcdrop.predict_with_uncertainty(
        model, POOL, n_samples=20, seed=mc_seed, keep_samples=True, masks="shared"
    )
    expected = batchbald(kept.samples, 5, seed=choice_seed)
    assert chosen.tolist() == expected.tolist()
    torch.testing.assert_close(chosen.scores, expected.scores, rtol=1e-9, atol=1e-12)


def test_on_a_repeated_pool_batchbald_takes_no_copies_where_top_k_bald_does() -> None:
    model = _confident_classifier()
    pool = POOL[:20].repeat_interleave(3, dim=0)  # every example three times
    for seed in range(3):
        batch = acquire(model, pool, 6, method="batchbald", n_samples=40, seed=seed)
        assert len(set((batch.indices // 3).tolist())) == 6
        top_k = acquire(model, pool, 6, method="bald", n_samples=40, seed=seed, masks="shared")
        assert len(set((top_k.indices // 3).tolist())) == 2  # three copies of two examples


def test_epig_uses_the_same_networks_for_pool_and_targets() -> None:
    model = _classifier()
    targets = torch.randn(15, 5, generator=torch.Generator().manual_seed(6))
    chosen = acquire(model, POOL, 6, method="epig", target_inputs=targets, n_samples=30, seed=2)
    mc_seed = split_seed(2)[0]
    pool_kept, target_kept = (
        mcdrop.predict_with_uncertainty(
            model, x, n_samples=30, seed=mc_seed, keep_samples=True, masks="shared"
        )
        for x in (POOL, targets)
    )
    scores = epig(pool_kept.samples, target_kept.samples)
    order = torch.sort(scores, descending=True, stable=True).indices[:6]
    assert chosen.tolist() == order.tolist()
    torch.testing.assert_close(chosen.scores, scores[order], rtol=1e-9, atol=1e-12)
    # With independent masks the same computation finds only finite-T noise: why masks matter.
    shared, independent = (
        [
            mcdrop.predict_with_uncertainty(
                model, x, n_samples=100, seed=seed, keep_samples=True, masks=masks
            ).samples
            for x, seed in ((POOL, 1), (targets, 2 if masks == "independent" else 1))
        ]
        for masks in ("shared", "independent")
    )
    assert float(epig(*independent).mean()) < 0.25 * float(epig(*shared).mean())


def test_joint_methods_without_a_seed_still_share_networks_between_pool_and_targets() -> None:
    model = _classifier()
    targets = POOL[:10]
    a = acquire(model, POOL, 3, method="epig", target_inputs=targets, n_samples=30)
    assert float(a.scores[0]) > 0.01  # independent draws for pool and targets would give ~0


def test_epig_needs_target_inputs_and_joint_methods_need_one_distribution_per_example() -> None:
    with pytest.raises(ValueError, match=r"`target_inputs` with method='epig'"):
        acquire(_classifier(), POOL, 3, method="epig", n_samples=4)
    images = torch.randn(6, 2, 4, 4)
    for method, extra in (("batchbald", {}), ("epig", {"target_inputs": images})):
        with pytest.raises(ValueError, match=r"one class distribution per example of `pool`"):
            acquire(_Segmenter().eval(), images, 2, method=method, n_samples=4, **extra)


@pytest.mark.parametrize(
    ("pool", "n", "kwargs", "error", "message"),
    [
        (POOL, 121, {}, ValueError, r"`n` to be at most the number of pool examples"),
        (POOL[:0], 1, {}, ValueError, r"`pool` to hold at least one example"),
        (POOL, 0, {}, ValueError, r"`n`"),
        (POOL, 2, {"method": "coreset"}, ValueError, r"`method`"),
        (POOL, 2, {"stochastic": "gumbel"}, ValueError, r"`stochastic`"),
        (POOL, 2, {"method": "random", "stochastic": "power"}, ValueError, r"stochastic=None"),
        (POOL, 2, {"target_inputs": POOL}, ValueError, r"`target_inputs` only with"),
        (POOL, 2, {"keep_samples": True}, TypeError, r"keep_samples"),
        (POOL, 2, {"reduction": None}, TypeError, r"`reduction`"),
        (
            DataLoader(TensorDataset(POOL), batch_size=8, shuffle=True),
            2,
            {},
            ValueError,
            r"keeps the order",
        ),
        (iter([POOL]), 2, {"method": "random"}, TypeError, r"size is known"),
    ],
)
def test_bad_input_is_refused(pool, n, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        acquire(_classifier(), pool, n, n_samples=4, **kwargs)


def test_an_iterable_pool_smaller_than_n_is_refused_after_sampling() -> None:
    with pytest.raises(ValueError, match=r"at most the number of pool examples in `pool` \(4\)"):
        acquire(_classifier(), iter([POOL[:4]]), 5, n_samples=4)
