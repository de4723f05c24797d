"""Sharded MC dropout over torch.distributed: gloo process groups on the CPU.

The two-rank tests spawn real processes (``spawn`` start method); one spawn runs every "happy
path" scenario and saves each rank's results, which the tests below then check in the parent.
"""

from __future__ import annotations

import os
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, SubsetRandomSampler, TensorDataset

import mcdrop
from mcdrop.distributed import shard_indices

N = 103
WORLD = 2
JOIN_TIMEOUT = 120.0

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


# -- models and data (module level: the spawned processes import them) ----------------------------


class IdRegressor(nn.Module):
    """Output = the row id in column 0, plus a tiny dropout-dependent term: order is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + 1e-3 * self.lin(self.drop(x[:, 1:]))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


class FailOnRank1(Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError("boom on purpose")
        return super().forward(x)


class CrashOnRank1(Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and dist.get_rank() == 1:
            os._exit(3)  # dies without a word: no status to exchange
        return super().forward(x)


def id_data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return torch.cat([ids, torch.randn(n, 4, generator=g)], 1), torch.arange(n)


def classifier_data(n: int = N) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Classifier().eval()
    g = torch.Generator().manual_seed(2)
    return model, torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _init(rank: int, init_file: str, timeout_s: float = 30.0) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=timeout_s),
    )


def _scenarios(rank: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    x, ids = id_data()
    reg = IdRegressor().eval()
    kw: dict[str, Any] = {"task": "regression", "n_samples": 8, "seed": 0, "distributed": True}
    out["tensor"] = mcdrop.predict_with_uncertainty(reg, x, targets=ids, batch_size=16, **kw)
    out["rank0"] = mcdrop.predict_with_uncertainty(reg, x, targets=ids, rank0_only=True, **kw)
    out["dict"] = mcdrop.predict_with_uncertainty(reg, {"x": x}, targets=ids, **kw)
    out["dataset"] = mcdrop.predict_with_uncertainty(
        reg, TensorDataset(x, ids), batch_size=10, **kw
    )
    loader = DataLoader(TensorDataset(x, ids), batch_size=7, shuffle=True, drop_last=True)
    out["loader"] = mcdrop.predict_with_uncertainty(reg, loader, **kw)
    out["one_example"] = mcdrop.predict_with_uncertainty(reg, x[:1], targets=ids[:1], **kw)

    model, xc, yc = classifier_data()
    out["clf"] = mcdrop.predict_with_uncertainty(
        model, xc, targets=yc, n_samples=300, seed=0, distributed=True
    )
    out["clf_auto"] = mcdrop.predict_with_uncertainty(
        model, xc, n_samples="auto", tolerance=0.05, seed=0, distributed=True
    )

    masks = nn.Sequential(nn.Dropout(0.5)).eval()
    ones = torch.ones(2 * 52, 8)
    mk: dict[str, Any] = {"task": "regression", "n_samples": 4, "keep_samples": True}
    out["masks_seed"] = mcdrop.predict_with_uncertainty(masks, ones, seed=5, distributed=True, **mk)
    torch.manual_seed(0)  # same global RNG state on both ranks
    out["masks_none"] = mcdrop.predict_with_uncertainty(masks, ones, distributed=True, **mk)
    shared = {**kw, "keep_samples": True, "masks": "shared"}
    torch.manual_seed(3)  # the same weights on both ranks and in the parent
    shared_reg = IdRegressor().eval()
    out["shared_seed"] = mcdrop.predict_with_uncertainty(shared_reg, x, batch_size=16, **shared)
    out["shared_none"] = mcdrop.predict_with_uncertainty(
        masks, ones, distributed=True, masks="shared", **mk
    )
    return out


def _attempt(model_cls: type[nn.Module]) -> dict[str, Any]:
    _, xc, _ = classifier_data()
    model = model_cls().eval()
    start = time.perf_counter()
    error: tuple[str, str] | None = None
    try:
        mcdrop.predict_with_uncertainty(model, xc, n_samples=10, seed=0, distributed=True)
    except Exception as exc:
        error = (type(exc).__name__, str(exc))
    return {"error": error, "elapsed": time.perf_counter() - start}


def _worker(rank: int, init_file: str, out_dir: str, scenario: str) -> None:
    path = os.path.join(out_dir, f"rank{rank}.pt")
    record: dict[str, Any] = {}
    try:
        _init(rank, init_file, timeout_s=30.0 if scenario == "main" else 20.0)
        if scenario == "main":
            record["results"] = _scenarios(rank)
        else:
            # a rank that raises: the status exchange leaves the process group usable
            record["fail"] = _attempt(FailOnRank1)
            torch.save(record, path)
            # a rank that dies (rank 1 exits inside the call and writes nothing more)
            record["crash"] = _attempt(CrashOnRank1)
    except BaseException:
        record["crash_traceback"] = traceback.format_exc()
    torch.save(record, path)
    if scenario == "main":
        dist.destroy_process_group()
    # after a crash the process group is broken: exit without a collective teardown


def _spawn(tmp: Path, scenario: str) -> tuple[list[int | None], list[dict[str, Any] | None]]:
    ctx = mp.get_context("spawn")
    init_file = str(tmp / "pg_init")
    procs = [
        ctx.Process(target=_worker, args=(r, init_file, str(tmp), scenario)) for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, f"{len(hung)} rank(s) hung in scenario {scenario!r}"
    records = []
    for r in range(WORLD):
        path = tmp / f"rank{r}.pt"
        records.append(torch.load(path, weights_only=False) if path.exists() else None)
    return [p.exitcode for p in procs], records


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    codes, records = _spawn(tmp_path_factory.mktemp("dist_main"), "main")
    for r, record in enumerate(records):
        assert record is not None, f"rank {r} wrote nothing (exit code {codes[r]})"
        assert "crash_traceback" not in record, f"rank {r} raised:\n{record['crash_traceback']}"
    assert codes == [0] * WORLD
    return [record["results"] for record in records if record is not None]


# -- two ranks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tensor", "dict", "dataset", "loader"])
def test_complete_and_ordered_on_every_rank(ranks: list[dict[str, Any]], name: str) -> None:
    ids = torch.arange(N)
    for results in ranks:
        result = results[name]
        assert result.mean.shape == (N, 1)
        assert torch.equal(result.targets, ids)  # nothing lost, duplicated or reordered
        assert torch.equal(result.mean[:, 0].round().long(), ids)
        assert result.n_samples == 8
        assert bool((result.epistemic_variance > 0).all())
    assert torch.equal(ranks[0][name].mean, ranks[1][name].mean)


def test_rank0_only_returns_none_elsewhere(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["rank0"] is None
    assert torch.equal(ranks[0]["rank0"].targets, torch.arange(N))
    assert torch.equal(ranks[0]["rank0"].mean[:, 0].round().long(), torch.arange(N))


def test_fewer_examples_than_ranks(ranks: list[dict[str, Any]]) -> None:
    for results in ranks:
        result = results["one_example"]
        assert result.mean.shape == (1, 1)
        assert torch.equal(result.targets, torch.zeros(1, dtype=torch.long))


def test_agrees_with_single_process_within_mc_error(ranks: list[dict[str, Any]]) -> None:
    model, xc, yc = classifier_data()
    single = mcdrop.predict_with_uncertainty(model, xc, targets=yc, n_samples=300, seed=1)
    dist_result = ranks[0]["clf"]
    assert single.standard_error is not None and dist_result.standard_error is not None
    assert dist_result.mean.shape == single.mean.shape == (N, 3)
    assert dist_result.n_samples == 300
    assert torch.equal(dist_result.targets, yc)
    se = (dist_result.standard_error**2 + single.standard_error**2).sqrt().clamp_min(1e-6)
    z = (dist_result.mean - single.mean).abs() / se
    assert float(z.max()) < 5.5, float(z.max())
    assert float(z.mean()) < 1.2  # E|Z| = 0.8 for a standard normal
    # issue 4 metrics take the gathered result unchanged
    from mcdrop.metrics import evaluate

    metrics = evaluate(dist_result)
    reference = evaluate(single)
    assert metrics["accuracy"] == pytest.approx(reference["accuracy"], abs=0.05)


def test_adaptive_sampling_merges_counts(ranks: list[dict[str, Any]]) -> None:
    result = ranks[0]["clf_auto"]
    assert 16 <= result.n_samples <= 1000
    assert result.standard_error_reached is not None
    assert result.standard_error_reached <= 0.05


@pytest.mark.parametrize("name", ["masks_seed", "masks_none"])
def test_ranks_draw_different_masks(ranks: list[dict[str, Any]], name: str) -> None:
    samples = ranks[0][name].samples
    assert samples.shape == (4, 104, 8)
    first, second = samples[:, :52], samples[:, 52:]  # rank 0's and rank 1's examples
    assert not torch.equal(first, second)
    assert set(samples.unique().tolist()) <= {0.0, 2.0}


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[int | None], list[Any]]:
    return _spawn(tmp_path_factory.mktemp("dist_fail"), "failures")


def test_shared_masks_are_one_network_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    """With shared masks a sample is one network whatever the world size: the gathered samples
    are those of one process; without a seed the ranks agree on one (rank 0's)."""
    x, _ = id_data()
    torch.manual_seed(3)
    single = mcdrop.predict_with_uncertainty(
        IdRegressor().eval(),
        x,
        task="regression",
        n_samples=8,
        seed=0,
        keep_samples=True,
        masks="shared",
    )
    for r in ranks:
        assert r["shared_seed"].masks == "shared"
        torch.testing.assert_close(r["shared_seed"].samples, single.samples)
    # an all-ones input through one shared mask: every example of a sample is the same row
    samples = ranks[0]["shared_none"].samples
    assert torch.equal(samples, samples[:, :1].expand_as(samples))
    assert torch.equal(ranks[1]["shared_none"].samples, samples)


def test_failing_rank_makes_every_rank_raise(failures: tuple[list[int | None], list[Any]]) -> None:
    _, records = failures
    assert records[0] is not None and records[1] is not None
    assert "crash_traceback" not in records[0], records[0].get("crash_traceback")
    kind, message = records[0]["fail"]["error"]
    assert kind == "RuntimeError"
    assert "rank 1 failed" in message and "boom on purpose" in message
    assert records[1]["fail"]["error"] == ("RuntimeError", "boom on purpose")  # its own error
    assert records[0]["fail"]["elapsed"] < 10


def test_crashed_rank_does_not_hang_the_others(
    failures: tuple[list[int | None], list[Any]],
) -> None:
    codes, records = failures
    assert codes[1] == 3
    assert "crash" not in records[1]  # it died inside the call
    error = records[0]["crash"]["error"]
    assert error is not None and error[0] == "RuntimeError"
    assert "crashed" in error[1]
    assert records[0]["crash"]["elapsed"] < 25  # gloo notices at once; the group timeout is 20 s


# -- one process -----------------------------------------------------------------------------------


def test_distributed_without_process_group_raises() -> None:
    assert not dist.is_initialized()
    model, xc, _ = classifier_data(8)
    with pytest.raises(ValueError, match="process group"):
        mcdrop.predict_with_uncertainty(model, xc, n_samples=2, distributed=True)


def test_rank0_only_needs_distributed() -> None:
    model, xc, _ = classifier_data(8)
    with pytest.raises(ValueError, match="rank0_only"):
        mcdrop.predict_with_uncertainty(model, xc, n_samples=2, rank0_only=True)


@pytest.fixture
def single_rank_group(tmp_path: Path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg1'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class _Stream(IterableDataset):
    def __iter__(self):
        yield from torch.randn(4, 4)


def test_unshardable_inputs_raise_clearly(single_rank_group: None) -> None:
    model, xc, yc = classifier_data(12)
    with pytest.raises(TypeError, match="IterableDataset"):
        mcdrop.predict_with_uncertainty(model, _Stream(), distributed=True, n_samples=2)
    with pytest.raises(TypeError, match="IterableDataset"):
        mcdrop.predict_with_uncertainty(
            model, DataLoader(_Stream(), batch_size=2), distributed=True, n_samples=2
        )
    with pytest.raises(TypeError, match="sharded"):
        mcdrop.predict_with_uncertainty(model, (b for b in [xc]), distributed=True, n_samples=2)
    subset_loader = DataLoader(
        TensorDataset(xc, yc), batch_size=4, sampler=SubsetRandomSampler([0, 1, 2])
    )
    with pytest.raises(ValueError, match="Subset"):
        mcdrop.predict_with_uncertainty(model, subset_loader, distributed=True, n_samples=2)
    with pytest.raises(ValueError, match="at least one example"):
        mcdrop.predict_with_uncertainty(model, xc[:0], distributed=True, n_samples=2)
    with pytest.raises(ValueError, match="targets"):
        mcdrop.predict_with_uncertainty(model, xc, targets=yc[:5], distributed=True, n_samples=2)


def test_single_rank_group_matches_plain_call(single_rank_group: None) -> None:
    model, xc, yc = classifier_data(40)
    result = mcdrop.predict_with_uncertainty(
        model, TensorDataset(xc, yc), n_samples=200, seed=0, distributed=True
    )
    plain = mcdrop.predict_with_uncertainty(model, xc, targets=yc, n_samples=200, seed=0)
    assert result.targets is not None and torch.equal(result.targets, yc)
    assert result.standard_error is not None and plain.standard_error is not None
    z = (result.mean - plain.mean).abs() / (
        (result.standard_error**2 + plain.standard_error**2).sqrt().clamp_min(1e-6)
    )
    assert float(z.max()) < 5.5


# -- shard_indices ---------------------------------------------------------------------------------


@given(n=st.integers(0, 500), world=st.integers(1, 17))
def test_shard_indices_cover_every_example_once(n: int, world: int) -> None:
    shards = [shard_indices(n, r, world) for r in range(world)]
    flat = [i for shard in shards for i in shard]
    assert flat == list(range(n))  # contiguous, in rank order, each index once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((5, 2, 2), ValueError),
        ((5, -1, 2), ValueError),
        ((-1, 0, 2), ValueError),
        ((5, 0, 0), ValueError),
        ((5.0, 0, 1), TypeError),
        ((5, True, 2), TypeError),
    ],
)
def test_shard_indices_rejects_bad_arguments(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        shard_indices(*args)
