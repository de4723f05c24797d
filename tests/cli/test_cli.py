"""The ``mcdrop`` command line: ``demo``, ``report``, help and error handling."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mcdrop
from mcdrop.cli import main
from mcdrop.metrics import evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ("reliability.png", "accuracy_rejection.png", "uncertainty_hist.png")
DEMO_FILES = (*REPORT_FILES, "shift.png", "ood.png")
MODELS = (
    "deterministic",
    "MC dropout",
    "temperature-scaled",
    "Dirichlet-calibrated",
    "deep ensemble",
)
COLUMNS = ("accuracy", "nll", "brier", "ece")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _parse_table(text: str) -> dict[str, dict[str, float]]:
    """Rows of a ``format_table`` table (model names may contain single spaces)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    header = lines[0].split()
    assert header[0] == "model"
    assert set(lines[1]) <= {"-", " "}
    rows = {}
    for line in lines[2:]:
        parts = line.split()
        values = parts[-(len(header) - 1) :]
        name = " ".join(parts[: len(parts) - len(values)])
        rows[name] = {key: float(value) for key, value in zip(header[1:], values, strict=True)}
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    code, stdout, stderr = _run(
        [
            "demo",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--samples",
            "10",
            "--seeds",
            "2",
            "--members",
            "2",
            "--quiet",
        ]
    )
    assert code == 0, stderr
    return out, stdout, stderr


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000  # a drawn figure, not an empty canvas


# ----------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------


def test_demo_writes_plots_report_and_result(demo):
    out, _, stderr = demo
    for name in DEMO_FILES:
        _assert_png(out / name)
    assert (out / "report.json").is_file()
    assert (out / "result.npz").is_file()
    assert stderr == ""  # --quiet: no progress bar, no status lines


def test_demo_report_json(demo):
    out, _, _ = demo
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "demo"
    assert report["mcdrop_version"] == mcdrop.__version__
    assert report["settings"] == {
        "epochs": 2,
        "samples": 10,
        "seed": 0,
        "seeds": 2,
        "members": 2,
        "threads": 1,
    }
    dataset = report["dataset"]
    assert (
        dataset["n_train"] + dataset["n_validation"] + dataset["n_test"] + dataset["n_ood"] == 1797
    )
    assert dataset["n_ood"] == 174 + 180  # every image of the digits 8 and 9
    assert all(t > 0 for t in report["temperature"])
    assert len(report["per_seed"]) == 2
    for run in report["per_seed"]:
        assert set(run["metrics"]) == set(MODELS)
        assert "rotation 45" in run["metrics"]["MC dropout"]
        assert set(run["ood_auroc"]["MC dropout"]) == {
            "1 − confidence",
            "entropy",
            "mutual information",
        }
    assert len(report["training_loss"]) == 2
    assert set(report["files"]) >= {*DEMO_FILES, "report.json", "result.npz"}
    assert list(report["metrics"]) == list(MODELS)
    for metrics in report["metrics"].values():
        for key in COLUMNS:
            assert isinstance(metrics[key], float)
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert 0.0 <= metrics["ece"] <= 1.0
        assert metrics["nll"] > 0.0


def test_demo_table_matches_metrics_recomputed_from_saved_result(demo):
    out, stdout, _ = demo
    table = _parse_table(stdout.split("\n\n")[0])
    assert list(table) == list(MODELS)
    assert all(list(row) == list(COLUMNS) for row in table.values())

    result = mcdrop.load_result(out / "result.npz")
    assert isinstance(result, mcdrop.ClassificationResult)
    assert result.n_samples == 10
    assert result.targets is not None
    n_test = json.loads((out / "report.json").read_text())["dataset"]["n_test"]
    assert tuple(result.mean.shape) == (n_test, 8)
    recomputed = evaluate(result)

    report = json.loads((out / "report.json").read_text())
    mean = report["mean_over_seeds"]
    for key in COLUMNS:
        assert report["metrics"]["MC dropout"][key] == pytest.approx(recomputed[key], rel=1e-9)
        for model in MODELS:  # the printed table: means over the seeds
            assert table[model][key] == pytest.approx(mean[model]["in distribution"][key], abs=5e-5)
            per_seed = [run["metrics"][model]["in distribution"][key] for run in report["per_seed"]]
            assert mean[model]["in distribution"][key] == pytest.approx(np.mean(per_seed))
    # temperature scaling never changes the predicted class
    assert report["metrics"]["temperature-scaled"]["accuracy"] == pytest.approx(
        report["metrics"]["deterministic"]["accuracy"]
    )


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def test_report_on_the_demo_result(demo, tmp_path):
    out, _, _ = demo
    code, stdout, stderr = _run(["report", str(out / "result.npz"), "--out", str(tmp_path), "-q"])
    assert code == 0, stderr
    assert stderr == ""
    for name in REPORT_FILES:
        _assert_png(tmp_path / name)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["command"] == "report"
    assert report["task"] == "classification"
    n_test = json.loads((out / "report.json").read_text())["dataset"]["n_test"]
    assert report["n_examples"] == n_test
    assert report["n_samples"] == 10
    assert report["targets"] == "result"
    (metrics,) = report["metrics"].values()
    assert {"accuracy", "nll", "brier", "ece", "mce", "aurc"} <= set(metrics)

    row = _parse_table(stdout)["result"]  # named after the file
    first_seed = json.loads((out / "report.json").read_text())["metrics"]["MC dropout"]
    for key in COLUMNS:
        assert row[key] == pytest.approx(first_seed[key], abs=5e-5)


def test_report_with_targets_file_and_name(demo, tmp_path):
    out, _, _ = demo
    result = mcdrop.load_result(out / "result.npz")
    labels = tmp_path / "labels.npy"
    np.save(labels, result.targets.numpy())
    bare = mcdrop.ClassificationResult(
        mean=result.mean,
        variance=result.variance,
        predictive_entropy=result.predictive_entropy,
        expected_entropy=result.expected_entropy,
        variation_ratio=result.variation_ratio,
        n_samples=result.n_samples,
    )
    bare.save(tmp_path / "bare.npz")

    code, _, stderr = _run(["report", str(tmp_path / "bare.npz"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert stderr.count("\n") == 1
    assert stderr.startswith("mcdrop: error: ") and "--targets" in stderr

    code, stdout, stderr = _run(
        [
            "report",
            str(tmp_path / "bare.npz"),
            "--targets",
            str(labels),
            "--name",
            "my model",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0, stderr
    assert "wrote" in stderr  # status line without --quiet
    rows = _parse_table(stdout)
    assert list(rows) == ["my model"]
    assert rows["my model"]["accuracy"] == pytest.approx(evaluate(result)["accuracy"], abs=5e-5)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["targets"] == str(labels)


def test_report_regression_result(tmp_path):
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(200, generator=generator, dtype=torch.float64)
    samples = y + 0.3 * torch.randn(30, 200, generator=generator, dtype=torch.float64)
    result = mcdrop.summarize_samples(samples, task="regression", tau=4.0, targets=y)
    result.save(tmp_path / "reg.npz")
    code, stdout, stderr = _run(["report", str(tmp_path / "reg.npz"), "--out", str(tmp_path)])
    assert code == 0, stderr
    _assert_png(tmp_path / "regression_calibration.png")
    _assert_png(tmp_path / "residual_std.png")
    row = _parse_table(stdout)["reg"]
    assert row["rmse"] == pytest.approx(evaluate(result)["rmse"], abs=5e-5)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "regression"


# ----------------------------------------------------------------------------------------------
# errors: one line on stderr, exit status 2
# ----------------------------------------------------------------------------------------------


def _error_cases(tmp_path: Path, result_file: Path) -> dict[str, tuple[list[str], str]]:
    text = tmp_path / "notes.txt"
    text.write_text("not a result\n")
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.arange(3))
    short = tmp_path / "short.npy"
    np.save(short, np.arange(5))
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"garbage")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = str(tmp_path / "out")
    res = str(result_file)
    return {
        "missing result": (["report", str(tmp_path / "nope.npz"), "--out", out], "not found"),
        "text file": (["report", str(text), "--out", out], "not an mcdrop result"),
        "npz without metadata": (["report", str(plain), "--out", out], "not an mcdrop result"),
        "directory": (["report", str(tmp_path), "--out", out], "directory"),
        "missing targets": (
            ["report", res, "--targets", str(tmp_path / "nope.npy"), "--out", out],
            "not found",
        ),
        "wrong number of targets": (
            ["report", res, "--targets", str(short), "--out", out],
            "targets (one per example of the result)",
        ),
        "unreadable targets": (
            ["report", res, "--targets", str(garbage), "--out", out],
            "cannot read targets",
        ),
        "output is a file": (["report", res, "--out", str(blocker)], "output directory"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing result",
        "text file",
        "npz without metadata",
        "directory",
        "missing targets",
        "wrong number of targets",
        "unreadable targets",
        "output is a file",
    ],
)
def test_errors_are_one_line_and_exit_2(demo, tmp_path, case):
    argv, needle = _error_cases(tmp_path, demo[0] / "result.npz")[case]
    code, stdout, stderr = _run(argv)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("mcdrop: error: ")
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert needle in stderr
    assert "Traceback" not in stderr


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", "result.npz"])  # --out is required
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["demo", "--samples", "0"])
    assert info.value.code == 2
    assert ">= 1" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: mcdrop" in err and "demo" in err and "report" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mcdrop {mcdrop.__version__}"


def test_python_m_mcdrop_help():
    proc = subprocess.run(
        [sys.executable, "-m", "mcdrop", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: mcdrop")
    for word in ("demo", "report", "--version"):
        assert word in proc.stdout


def test_help_of_subcommands(capsys):
    for command in ("demo", "report"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: mcdrop {command}" in text
        assert "--out" in text and "--quiet" in text


def test_demo_prints_what_the_numbers_show(demo):
    _, stdout, _ = demo
    assert "What the numbers show" in stdout
    assert "Ovadia et al. (2019)" in stdout
    assert "OOD AUROC" in stdout and "NLL under rotation" in stdout and "ECE under noise" in stdout


def test_demo_refuses_a_single_sample_in_one_line(tmp_path):
    code, stdout, stderr = _run(["demo", "--out", str(tmp_path), "--samples", "1", "-q"])
    assert code == 2 and stdout == ""
    assert stderr.startswith("mcdrop: error: Expected `samples`") and stderr.count("\n") == 1


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(proc.stdout.split())


def test_help_and_version_do_not_import_torch():
    """``mcdrop --help`` is instant: neither the entry point nor the parser imports torch."""
    code = (
        "import contextlib, io\n"
        "from mcdrop.cli import main\n"
        "for argv in (['--help'], ['--version'], ['demo', '--help'], ['report', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
    )
    loaded = _modules_after(code)
    assert "mcdrop.cli" in loaded  # the probe would see torch if anything imported it
    assert not {"torch", "numpy", "matplotlib"} & loaded


def test_top_level_names_are_imported_on_first_use():
    """``import mcdrop`` is lazy, yet every name of ``__all__`` is there, with the same object."""
    assert "torch" not in _modules_after("import mcdrop")
    assert "torch" in _modules_after("import mcdrop\nmcdrop.predict_with_uncertainty")
    from mcdrop import calibration, reporting, results, sampling

    for name in mcdrop.__all__:
        assert name in dir(mcdrop)
        assert getattr(mcdrop, name) is not None
    assert mcdrop.predict_with_uncertainty is sampling.predict_with_uncertainty
    assert mcdrop.ClassificationResult is results.ClassificationResult
    assert mcdrop.report is reporting.report
    assert mcdrop.calibration is calibration
    with pytest.raises(AttributeError, match="no attribute 'predict'"):
        mcdrop.predict  # noqa: B018
