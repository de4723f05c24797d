"""Tests of the UCI reproduction script ``benchmarks/uci_gal2016.py``.

The tests build a tiny synthetic data set in the layout of the Gal & Ghahramani (2016) UCI
folders; only :func:`test_yacht_smoke` reads the shared data, and it skips when that is absent.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "uci_gal2016.py"
YACHT = ROOT.parent / "shared" / "data" / "uci" / "yacht"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("uci_gal2016", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["uci_gal2016"] = module
    spec.loader.exec_module(module)
    return module


uci = _load_script()


def _write_dataset(root: Path, name: str = "synth", *, reference: bool = True) -> Path:
    """A 60-row data set with 2 splits of unequal training size (54 and 53 rows)."""
    rng = np.random.default_rng(0)
    n_rows = 60
    features = rng.normal(size=(n_rows, 3))
    features[:, 2] = 4.0  # a constant column: its standard deviation must become 1
    target = 3.0 * features[:, 0] - 2.0 * features[:, 1] + 10.0 + 0.1 * rng.normal(size=n_rows)
    # target is column 2 of data.txt, features are columns 0, 1, 3
    data = np.column_stack([features[:, 0], features[:, 1], target, features[:, 2]])
    folder = root / name
    folder.mkdir(parents=True)
    np.savetxt(folder / "data.txt", data)
    (folder / "index_features.txt").write_text("0\n1\n3\n")
    (folder / "index_target.txt").write_text("2\n")
    (folder / "n_splits.txt").write_text("2\n")
    (folder / "n_hidden.txt").write_text("16\n")
    for split, n_test in enumerate((6, 7)):
        order = np.random.default_rng(split + 1).permutation(n_rows)
        np.savetxt(folder / f"index_train_{split}.txt", np.sort(order[n_test:]), fmt="%d")
        np.savetxt(folder / f"index_test_{split}.txt", np.sort(order[:n_test]), fmt="%d")
    if reference:
        published = {
            "rmse_mean": 0.5,
            "rmse_stderr": 0.1,
            "ll_mean": -1.0,
            "ll_stderr": 0.1,
            "n_splits": 2,
            "rmse_per_split": [0.4, 0.6],
            "ll_per_split": [-0.9, -1.1],
        }
        entry = {
            "dropout_rate": 0.05,
            "tau": 10.0,
            "lengthscale": 0.01,
            "batch_size": 16,
            "epochs": 3,
            "epochs_10x": 300,
            "n_hidden": 16,
            "mc_samples": 50,
            "paper_table1": published,
            "paper_10x_epochs": published,
        }
        (root / "reference.json").write_text(json.dumps({name: entry}))
    return folder


def test_end_to_end_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _write_dataset(tmp_path)
    out = tmp_path / "out" / "synth.json"
    assert uci.main([str(folder), "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "synth"
    for key in ("rmse", "test_ll"):
        assert set(result[key]) == {"mean", "stderr", "per_split"}
        per_split = np.array(result[key]["per_split"])
        assert per_split.shape == (2,) and np.isfinite(per_split).all()
        assert result[key]["mean"] == pytest.approx(per_split.mean())
        assert result[key]["stderr"] == pytest.approx(per_split.std() / np.sqrt(2))
    config = result["config"]
    # defaults of the 10x protocol come from reference.json
    assert (config["epochs"], config["samples"], config["n_hidden"], config["batch_size"]) == (
        300,
        50,
        16,
        16,
    )
    assert config["reg"][0] == pytest.approx(0.01**2 * 0.95 / (2 * 54 * 10.0))
    assert config["reg"][1] == pytest.approx(0.01**2 * 0.95 / (2 * 53 * 10.0))
    # the network learned the linear target (std of y is about 3.6)
    assert result["rmse"]["mean"] < 1.0
    assert result["published"]["rmse"]["mean"] == pytest.approx(0.5)
    assert set(result["published"]["within_2se"]) == {"rmse", "test_ll"}
    printed = capsys.readouterr().out
    # published mean ± standard error (ddof=0) of the per-split values 0.4, 0.6
    assert "published 0.5 ± 0.07071 on the same splits; within 2 SE:" in printed


def test_table1_protocol_and_command_line_overrides(tmp_path: Path) -> None:
    folder = _write_dataset(tmp_path)
    out = tmp_path / "t1.json"
    argv = [str(folder), "--protocol", "table1", "--splits", "1", "--samples", "7"]
    assert uci.main([*argv, "--tau", "2.5", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    config = result["config"]
    assert (config["epochs"], config["samples"], config["splits"], config["tau"]) == (3, 7, 1, 2.5)
    assert len(result["rmse"]["per_split"]) == 1
    assert result["published"]["rmse"]["per_split"] == [0.4]


def test_without_reference_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _write_dataset(tmp_path, reference=False)
    assert uci.main([str(folder), "--splits", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--dropout, --tau, --lengthscale, --epochs" in err
    argv = [str(folder), "--splits", "1", "--dropout", "0.1", "--tau", "1", "--lengthscale", "1"]
    assert uci.main([*argv, "--epochs", "2", "--samples", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and "published" not in printed  # n_hidden came from n_hidden.txt


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "dataset directory not found"),
        ("empty", "no data.txt"),
        ("no_split", "index_train_0.txt"),
        ("bad_index", "indexes past row"),
        ("too_many_splits", "--splits must be between 1 and 2"),
    ],
)
def test_bad_dataset_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, expected: str
) -> None:
    folder = tmp_path / "synth"
    extra: list[str] = []
    if setup == "empty":
        folder.mkdir()
    elif setup != "missing":
        folder = _write_dataset(tmp_path)
        if setup == "no_split":
            for path in folder.glob("index_train_*.txt"):
                path.unlink()
            (folder / "n_splits.txt").unlink()
        elif setup == "bad_index":
            (folder / "index_test_1.txt").write_text("0\n1000\n")
        else:
            extra = ["--splits", "3"]
    assert uci.main([str(folder), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uci_gal2016.py: error:") and "\n" not in err
    assert expected in err


def test_bad_dataset_dir_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr


def _adam_reference(
    X: np.ndarray,
    y: np.ndarray,
    init: dict[str, torch.Tensor],
    split: int,
    *,
    reg: float,
    epochs: int,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """One network trained with autograd and ``torch.optim.Adam`` (no dropout, no shuffling)."""
    params = {name: value[split].clone().requires_grad_() for name, value in init.items()}
    optimiser = torch.optim.Adam(params.values(), lr=1e-3)
    X_t = torch.tensor(X, dtype=torch.float32)
    y_t = torch.tensor(y, dtype=torch.float32)[:, None]
    for _ in range(epochs):
        for lo in range(0, len(X_t), batch_size):
            xb, yb = X_t[lo : lo + batch_size], y_t[lo : lo + batch_size]
            hidden = torch.relu(xb @ params["W1"] + params["b1"])
            out = hidden @ params["W2"] + params["b2"]
            penalty = (params["W1"] ** 2).sum() + (params["W2"] ** 2).sum()
            loss = ((out - yb) ** 2).mean() + reg * penalty
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return {name: value.detach() for name, value in params.items()}


def test_batched_training_equals_independent_adam() -> None:
    """Without dropout and with whole-set batches (order-free), each network of the batch follows
    exactly the autograd + torch.optim.Adam trajectory of its own loss; uneven training sizes
    (padding) and a split that runs out of batches (skipped steps) included."""
    rng = np.random.default_rng(1)
    sizes, n_features, n_hidden = [5, 4, 5], 3, 7
    X = [rng.normal(size=(n, n_features)) for n in sizes]
    y = [rng.normal(size=n) for n in sizes]
    regs = [0.01, 0.02, 0.03]
    gen = torch.Generator().manual_seed(0)
    init = {
        "W1": 0.5 * torch.randn(3, n_features, n_hidden, generator=gen),
        "b1": 0.1 * torch.randn(3, 1, n_hidden, generator=gen),
        "W2": 0.5 * torch.randn(3, n_hidden, 1, generator=gen),
        "b2": 0.1 * torch.randn(3, 1, 1, generator=gen),
    }
    common = {"n_hidden": n_hidden, "dropout_rate": 0.0, "reg": regs, "epochs": 200}
    batched = uci.train_networks(X, y, batch_size=8, init=init, **common)
    for split in range(3):
        ref = _adam_reference(
            X[split], y[split], init, split, reg=regs[split], epochs=200, batch_size=8
        )
        for name, value in ref.items():
            torch.testing.assert_close(batched[name][split], value, rtol=1e-5, atol=1e-6)
    # batch 4: split 1 (4 rows) has one batch per epoch, the others two
    batched = uci.train_networks(X, y, batch_size=4, init=init, **common)
    ref = _adam_reference(X[1], y[1], init, 1, reg=regs[1], epochs=200, batch_size=4)
    for name, value in ref.items():
        torch.testing.assert_close(batched[name][1], value, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched["W1"][1], init["W1"][1])


def test_keep_mask_is_inverted_bernoulli() -> None:
    keep = uci._keep_mask(np.random.default_rng(0), 200_000, 0.05)
    assert set(np.unique(keep)) == {0.0, np.float32(1 / 0.95)}
    assert abs((keep == 0).mean() - 0.05) < 0.002
    assert (uci._keep_mask(np.random.default_rng(0), 10, 0.0) == 1.0).all()
    # tiny n with a large p exercises the "draw more gaps" branch
    drops = np.mean(
        [(uci._keep_mask(np.random.default_rng(s), 3, 0.9) == 0).mean() for s in range(2000)]
    )
    assert abs(drops - 0.9) < 0.02


def test_build_model_matches_batched_network() -> None:
    gen = torch.Generator().manual_seed(0)
    params = {
        "W1": torch.randn(2, 3, 5, generator=gen),
        "b1": torch.randn(2, 1, 5, generator=gen),
        "W2": torch.randn(2, 5, 1, generator=gen),
        "b2": torch.randn(2, 1, 1, generator=gen),
    }
    x_stats = (np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 0.5]))
    model = uci.build_model(params, 1, 0.1, x_stats, (5.0, 3.0))
    assert not model.training
    X = torch.randn(4, 3, generator=gen)
    z = (X - torch.tensor([1.0, 2.0, 3.0])) / torch.tensor([2.0, 1.0, 0.5])
    expected = torch.relu(z @ params["W1"][1] + params["b1"][1]) @ params["W2"][1]
    expected = (expected + params["b2"][1]) * 3.0 + 5.0
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected)


def test_standardise_constant_column() -> None:
    mean, std = uci.standardise(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(std, [1.0, 1.0])  # ddof=0 std of [1, 3] is 1; constant -> 1


@pytest.mark.skipif(not YACHT.is_dir(), reason="shared UCI data not available")
def test_yacht_smoke(tmp_path: Path) -> None:
    """One split of the real yacht data, few epochs, through the command line."""
    out = tmp_path / "yacht.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(YACHT),
            "--splits",
            "1",
            "--epochs",
            "40",
            "--samples",
            "200",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["config"]["dropout_rate"] == 0.01 and result["config"]["lengthscale"] == 0.1
    assert result["published"]["source"] == "paper_10x_epochs"
    assert result["published"]["rmse"]["per_split"] == [pytest.approx(0.80357)]
    assert np.isfinite(result["rmse"]["mean"]) and np.isfinite(result["test_ll"]["mean"])
    assert "within 2 SE" in proc.stdout
