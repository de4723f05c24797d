"""Labelled / unlabelled bookkeeping and the active-learning step around a user's training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from mcdrop.active import ActiveStep, LabelledSet, active_learning_step


def test_initial_draws_distinct_indices_reproducibly() -> None:
    a = LabelledSet.initial(50, 12, seed=3)
    assert len(set(a.labelled)) == 12 and all(0 <= i < 50 for i in a.labelled)
    assert LabelledSet.initial(50, 12, seed=3).labelled == a.labelled
    assert LabelledSet.initial(50, 12, seed=4).labelled != a.labelled
    assert sorted(a.unlabelled.tolist() + list(a.labelled)) == list(range(50))


def test_initial_with_labels_is_balanced() -> None:
    labels = np.repeat(np.arange(4), [5, 10, 20, 65])  # imbalanced classes
    state = LabelledSet.initial(100, 14, labels=labels, seed=0)
    counts = np.bincount(labels[list(state.labelled)], minlength=4)
    assert counts.sum() == 14 and counts.max() - counts.min() <= 1
    # More than the smallest class holds: it is exhausted, the rest spread over the others.
    state = LabelledSet.initial(100, 30, labels=labels, seed=0)
    counts = np.bincount(labels[list(state.labelled)], minlength=4)
    assert counts[0] == 5 and counts.sum() == 30 and counts[1:].max() - counts[1:].min() <= 1


def test_label_maps_pool_positions_to_dataset_indices() -> None:
    state = LabelledSet(10, (2, 7))
    np.testing.assert_array_equal(state.unlabelled, [0, 1, 3, 4, 5, 6, 8, 9])
    after = state.label([0, 3, 7])
    assert after.labelled == (2, 7, 0, 4, 9)
    assert state.labelled == (2, 7)  # a value: the original is unchanged
    dataset = TensorDataset(torch.arange(10) * 10)
    labelled, pool = after.split(dataset)
    assert [int(labelled[i][0]) for i in range(len(labelled))] == [20, 70, 0, 40, 90]
    assert [int(pool[i][0]) for i in range(len(pool))] == [10, 30, 50, 60, 80]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: LabelledSet(5, (1, 1)), ValueError, r"distinct `labelled`"),
        (lambda: LabelledSet(5, (5,)), ValueError, r"`labelled` indices in \[0, 5\)"),
        (lambda: LabelledSet(0), ValueError, r"`size`"),
        (lambda: LabelledSet.initial(5, 6), ValueError, r"`n` to be at most `size`"),
        (lambda: LabelledSet.initial(5, 2, labels=[0, 1]), ValueError, r"`labels` of shape"),
        (lambda: LabelledSet(5, (1,)).label([4]), ValueError, r"`pool_positions` in \[0, 4\)"),
        (lambda: LabelledSet(5).split(list(range(4))), ValueError, r"`dataset` of 5"),
    ],
)
def test_bad_bookkeeping_is_refused(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    y = (x[:, 0] * x[:, 1] > 0).long() + 2 * (x[:, 0] > 1).long()  # 4 classes, non-linear
    return x, y


def _train(subset: Subset) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 4))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(8):
        for x, y in DataLoader(subset, batch_size=64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    return model.eval()


def test_steps_train_evaluate_and_acquire() -> None:
    x, y = _data(150, seed=0)
    test_x, test_y = _data(500, seed=1)
    dataset = TensorDataset(x, y)

    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"accuracy": float((model(test_x).argmax(1) == test_y).float().mean())}

    state = LabelledSet.initial(len(dataset), 10, labels=y, seed=0)
    history: list[ActiveStep] = []
    for step in range(2):
        result = active_learning_step(
            state, dataset, 15, train=_train, evaluate=evaluate, n_samples=20, seed=step
        )
        assert result.n_labelled == 10 + 15 * step
        assert len(result.acquired) == 15
        assert not set(result.acquired) & set(state.labelled)
        assert result.labelled.labelled == state.labelled + result.acquired
        # The acquired dataset indices are the acquisition's pool positions, mapped.
        assert list(result.acquired) == state.unlabelled[result.acquisition.indices].tolist()
        history.append(result)
        state = result.labelled
    assert all(0.0 <= h.metrics["accuracy"] <= 1.0 for h in history)
    again = active_learning_step(
        LabelledSet(150, history[0].labelled.labelled),
        dataset,
        15,
        train=_train,
        n_samples=20,
        seed=1,
    )
    assert again.acquired == history[1].acquired  # reproducible with a seed
    assert again.metrics == {}


def test_train_must_return_a_model() -> None:
    dataset = TensorDataset(*_data(20, seed=0))
    with pytest.raises(TypeError, match=r"`train` to return the trained nn.Module"):
        active_learning_step(LabelledSet(20, (0, 1)), dataset, 2, train=lambda s: None)


def test_a_lightning_trainer_fits_as_the_training_function() -> None:
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.02)

    def train(subset: Subset) -> nn.Module:
        module = Module()
        trainer = lightning.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, DataLoader(subset, batch_size=16))
        return module.eval()

    dataset = TensorDataset(*_data(80, seed=2))
    result = active_learning_step(
        LabelledSet.initial(80, 10, seed=0), dataset, 5, train=train, n_samples=10, seed=0
    )
    assert len(result.acquired) == 5 and result.n_labelled == 10
