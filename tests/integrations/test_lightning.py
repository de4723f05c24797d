"""MCDropoutCallback in a real Lightning Trainer on the CPU: logging, results, module untouched."""

from __future__ import annotations

import csv
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import mcdrop  # noqa: E402
from mcdrop import metrics  # noqa: E402
from mcdrop.lightning import MCDropoutCallback, merge_results, split_batch  # noqa: E402


class Classifier(pl.LightningModule):
    """An ordinary LightningModule: nothing in it knows about mcdrop."""

    def __init__(self, dropout: bool = True) -> None:
        super().__init__()
        layers = [nn.Linear(6, 32), nn.ReLU(), nn.BatchNorm1d(32)]
        layers += [nn.Dropout(0.3)] if dropout else []
        self.net = nn.Sequential(*layers, nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int = 96, seed: int = 0, shuffle: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=shuffle, generator=g)


def _trainer(tmp_path, callbacks=(), **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        callbacks=list(callbacks),
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _flags(module: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in module.named_modules()}


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(autouse=True)
def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*log_every_n_steps.*")


def test_fit_two_epochs_logs_metrics_and_trains_as_without_callback(tmp_path) -> None:
    torch.manual_seed(0)
    plain = Classifier()
    with_callback = Classifier()
    with_callback.load_state_dict(plain.state_dict())
    callback = MCDropoutCallback(n_samples=8, metrics=("nll", "brier", "ece", "accuracy"))

    torch.manual_seed(1)
    _trainer(tmp_path / "plain").fit(plain, _loader(shuffle=True), _loader(seed=1))
    torch.manual_seed(1)
    trainer = _trainer(tmp_path / "mc", [callback])
    trainer.fit(with_callback, _loader(shuffle=True), _loader(seed=1))

    # the callback does not change training: same weights, same running statistics
    _assert_same_state(_state(plain), _state(with_callback))
    assert _flags(plain) == _flags(with_callback)
    # logged through the Trainer's logger once per validation epoch
    for name in ("val_mc_nll", "val_mc_brier", "val_mc_ece", "val_mc_accuracy"):
        assert name in trainer.callback_metrics
    with open(trainer.logger.log_dir + "/metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val_mc_nll")]
    assert len(rows) == 2
    assert float(rows[-1]["val_mc_nll"]) == pytest.approx(callback.results_["val_mc_nll"], rel=1e-6)


def test_validate_test_predict_leave_the_module_untouched_and_return_results(tmp_path) -> None:
    torch.manual_seed(0)
    module = Classifier().eval()
    flags, state = _flags(module), _state(module)
    callback = MCDropoutCallback(
        n_samples=10, metrics=("nll", "brier", "ece", "misclassification_auroc")
    )
    trainer = _trainer(tmp_path, [callback])
    loader = _loader(n=90, seed=2)

    trainer.test(module, loader, verbose=False)
    tested = dict(callback.results_)
    batches = trainer.predict(module, loader)
    assert _flags(module) == flags
    _assert_same_state(state, _state(module))

    assert len(batches) == 3 and all(isinstance(b, mcdrop.ClassificationResult) for b in batches)
    result = merge_results(batches)
    assert result.mean.shape == (90, 3) and result.n_samples == 10
    assert torch.equal(result.targets, loader.dataset.tensors[1])
    # test and predict sample every batch with the same seed: the logged values are the
    # functional metrics of the predicted results
    y, p = result.targets, result.mean
    assert tested["test_mc_nll"] == pytest.approx(metrics.negative_log_likelihood(y, p))
    assert tested["test_mc_brier"] == pytest.approx(metrics.brier_score(y, p))
    assert tested["test_mc_ece"] == pytest.approx(metrics.expected_calibration_error(y, p))
    auroc = metrics.misclassification_auroc(y, p, result.mutual_information)
    assert tested["test_mc_misclassification_auroc"] == pytest.approx(auroc)
    # the batch's result is what predict_with_uncertainty gives on the module in eval mode
    direct = mcdrop.predict_with_uncertainty(
        module,
        loader.dataset.tensors[0][:32],
        n_samples=10,
        seed=callback._batch_seed(trainer, 0, 0),
    )
    torch.testing.assert_close(batches[0].mean, direct.mean)


def test_module_without_dropout_gets_a_clear_error(tmp_path) -> None:
    trainer = _trainer(tmp_path, [MCDropoutCallback(n_samples=4)])
    with pytest.raises(
        ValueError, match=r"needs dropout in the LightningModule `Classifier`.*include="
    ):
        trainer.validate(Classifier(dropout=False), _loader(), verbose=False)


def test_bad_options_and_batches() -> None:
    with pytest.raises(ValueError, match="stages"):
        MCDropoutCallback(stages=("train",))
    with pytest.raises(ValueError, match="metrics"):
        MCDropoutCallback(metrics=("rmse",))
    with pytest.raises(TypeError, match="targets"):
        MCDropoutCallback(targets=torch.zeros(3))
    with pytest.raises(ValueError, match="n_samples"):
        MCDropoutCallback(n_samples=0)
    x, y = torch.zeros(2, 3), torch.zeros(2)
    assert split_batch((x, y)) == (x, y)
    inputs, labels = split_batch({"input_ids": x, "labels": y})
    assert set(inputs) == {"input_ids"} and labels is y
    with pytest.raises(TypeError, match="batch_transform"):
        split_batch((x, y, y))


def test_missing_targets_in_validation_say_what_to_do(tmp_path) -> None:
    callback = MCDropoutCallback(n_samples=4, batch_transform=lambda batch: (batch[0], None))
    with pytest.raises(ValueError, match="batch_transform"):
        _trainer(tmp_path, [callback]).validate(Classifier(), _loader(), verbose=False)


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def validation_step(self, batch, batch_idx):
        pass


def test_regression_logs_gaussian_nll(tmp_path) -> None:
    torch.manual_seed(0)
    module = Regressor().eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(40, 6, generator=g), torch.randn(40, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=40)
    callback = MCDropoutCallback(n_samples=6, task="regression", tau=4.0)
    _trainer(tmp_path, [callback]).validate(module, loader, verbose=False)
    seed = int(np.random.SeedSequence([0, 0, 0, 0]).generate_state(1)[0])
    result = mcdrop.predict_with_uncertainty(
        module, x, task="regression", tau=4.0, n_samples=6, seed=seed
    )
    expected = metrics.gaussian_nll(y, result.mean, result.variance)
    assert callback.results_["val_mc_gaussian_nll"] == pytest.approx(expected, rel=1e-6)


def test_the_callback_takes_the_cores_options_and_defaults():
    import inspect

    core = inspect.signature(mcdrop.predict_with_uncertainty).parameters["n_samples"].default
    assert MCDropoutCallback().n_samples == core == 100
    with pytest.raises(TypeError, match="unknown.*'samples'"):
        MCDropoutCallback(samples=3)
    with pytest.raises(ValueError, match="`amp`"):
        MCDropoutCallback(amp="fp8")
