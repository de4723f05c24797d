"""Result files: one schema on save and load; crafted and fuzzed files only ever raise ValueError."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import random
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mcdrop
from mcdrop.cli import main


def _classification(
    targets: bool = True, keep_samples: bool = False
) -> mcdrop.ClassificationResult:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 5, 3, generator=generator, dtype=torch.float64), -1)
    result = mcdrop.summarize_samples(
        probs, outputs="probs", targets=torch.tensor([0, 1, 2, 1, 0]) if targets else None
    )
    if keep_samples:  # as predict_with_uncertainty(keep_samples=True) stores them
        fields = result.to_dict()
        kwargs = {k: fields[k] for k in ("mean", "variance", "predictive_entropy")}
        kwargs.update(
            expected_entropy=fields["expected_entropy"],
            variation_ratio=fields["variation_ratio"],
            n_samples=6,
            targets=fields["targets"],
            samples=probs,
        )
        result = mcdrop.ClassificationResult(**kwargs)
    return result


def _regression() -> mcdrop.RegressionResult:
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(7, 4, 2, generator=generator, dtype=torch.float64)
    return mcdrop.summarize_samples(samples, task="regression", tau=2.0, targets=torch.zeros(4, 2))


def _members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _meta(members: dict[str, np.ndarray]) -> dict:
    return json.loads(members["__meta__"].tobytes())


def _write(path: Path, members: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    if meta is not None:
        members = dict(members, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    np.savez(path, **members)
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(ValueError) as info:
        mcdrop.load_result(path)
    message = str(info.value)
    assert str(path) in message or repr(str(path)) in message
    return message


# ------------------------------------------------------------------------------------------
# crafted files: each one names the field
# ------------------------------------------------------------------------------------------

_META_CASES = {
    "n_samples": [2.5, "5", True, 0, -1, None, [3]],
    "class_dim": [5, 0, 1.5, "1", -3],
    "version": ["1", True, 0, 1.0],
    "task": [["classification"], 3, "segmentation"],
    "tau": [float("nan"), -1.0, "2", math.inf],
    "standard_error_reached": ["x", -1.0, float("nan")],
    "masks": ["per_example", 3, None],
    "targets": [[0, 1, 2, 1, 0]],
    "surprise": [1],
}


@pytest.mark.parametrize(
    ("key", "value"), [(k, v) for k, values in _META_CASES.items() for v in values]
)
def test_crafted_metadata_is_refused_naming_the_field(tmp_path, key, value):
    result = _regression() if key == "tau" else _classification()
    result.save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    meta = _meta(members)
    meta[key] = value
    if key == "targets":
        members.pop("targets")
    message = _load_error(_write(tmp_path / "bad.npz", members, meta))
    assert f"`{key}`" in message or (key == "task" and value == "segmentation")


def _replace(name: str, transform):
    def make(members: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(members, **{name: transform(members[name])})

    return make


_ARRAY_CASES = {
    "mean wrong shape": ("mean", _replace("mean", lambda a: a[:, :2])),
    "variance wrong shape": ("variance", _replace("variance", lambda a: a[:3])),
    "entropy wrong shape": (
        "predictive_entropy",
        _replace("predictive_entropy", lambda a: a[:, None]),
    ),
    "mean integer dtype": ("mean", _replace("mean", lambda a: (a > 0.5).astype(np.int64))),
    "mean complex dtype": ("mean", _replace("mean", lambda a: a.astype(np.complex128))),
    "mean NaN": ("mean", _replace("mean", lambda a: np.where(a > 0.5, np.nan, a))),
    "mean above 1": ("mean", _replace("mean", lambda a: a * 3)),
    "mean rows off": ("mean", _replace("mean", lambda a: a * 0.5)),
    "negative variance": ("variance", _replace("variance", lambda a: -a - 1)),
    "entropy above log C": (
        "predictive_entropy",
        _replace("predictive_entropy", lambda a: a + 5.0),
    ),
    "variation ratio above 1": ("variation_ratio", _replace("variation_ratio", lambda a: a + 2)),
    "targets wrong rows": ("targets", _replace("targets", lambda a: a[:2])),
    "targets scalar": ("targets", _replace("targets", lambda a: np.array(3))),
    "targets string dtype": ("targets", _replace("targets", lambda a: a.astype("U3"))),
    "samples wrong T": ("samples", _replace("samples", lambda a: a[:2])),
    "unknown array": ("bonus", lambda m: dict(m, bonus=np.zeros(3))),
    "missing mean": ("mean", lambda m: {k: v for k, v in m.items() if k != "mean"}),
    "structured dtype": (
        "variance",
        _replace("variance", lambda a: np.zeros(a.shape, dtype=[("x", "f8")])),
    ),
}


@pytest.mark.parametrize("case", sorted(_ARRAY_CASES))
def test_crafted_arrays_are_refused_naming_the_field(tmp_path, case):
    field, make = _ARRAY_CASES[case]
    _classification(keep_samples=True).save(tmp_path / "ok.npz")
    members = make(_members(tmp_path / "ok.npz"))
    message = _load_error(_write(tmp_path / "bad.npz", members))
    assert f"`{field}`" in message


def test_pickled_and_object_members_are_never_unpickled(tmp_path):
    _classification().save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    path = tmp_path / "pickled.npz"
    np.savez(path, **dict(members, targets=np.array([object()] * 5, dtype=object)))
    assert "`targets`" in _load_error(path)


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_memory_is_bounded_by_what_the_file_declares(tmp_path):
    _classification().save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as archive:  # a 192 MiB header with 40 bytes of data
        for name, array in members.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(name + ".npy", buffer.getvalue())
        archive.writestr("samples.npy", _npy_header((1024, 1024, 24)) + b"\0" * 40)
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        message = _load_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "`samples`" in message
    assert peak < 2 * 2**20


def test_a_deflate_bomb_is_refused_before_inflating(tmp_path):
    _classification().save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    path = tmp_path / "deflate.npz"
    shape = (5, 3, 2**20 // 3)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in members.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            if name != "variance":
                archive.writestr(name + ".npy", buffer.getvalue())
        archive.writestr("variance.npy", _npy_header(shape) + bytes(8 * math.prod(shape)))
    assert path.stat().st_size < 100_000  # 40 MB of zeros, deflated
    tracemalloc.start()
    try:
        message = _load_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "`variance`" in message
    assert peak < 2 * 2**20  # refused from its header: nothing inflated


def test_byte_order_and_fortran_layout_load_correctly(tmp_path):
    result = _regression()
    result.save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    flipped = {
        k: (np.asfortranarray(v).astype(">f8") if k != "__meta__" else v)
        for k, v in members.items()
    }
    loaded = mcdrop.load_result(_write(tmp_path / "be.npz", flipped))
    assert torch.equal(loaded.mean, result.mean)
    assert torch.equal(loaded.epistemic_variance, result.epistemic_variance)


def test_save_applies_the_same_schema(tmp_path):
    good = _classification()
    fields = good.to_dict()
    bad = mcdrop.ClassificationResult(
        mean=fields["mean"] * 2,  # rows sum to 2
        variance=fields["variance"],
        predictive_entropy=fields["predictive_entropy"],
        expected_entropy=fields["expected_entropy"],
        variation_ratio=fields["variation_ratio"],
        n_samples=6,
    )
    with pytest.raises(ValueError, match="`mean`"):
        bad.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_valid_files_round_trip(tmp_path):
    for result in (_classification(), _classification(False, True), _regression()):
        result.save(tmp_path / "r.npz")
        loaded = mcdrop.load_result(tmp_path / "r.npz")
        for key, value in result.to_dict().items():
            other = loaded.to_dict()[key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), key
            else:
                assert value == other, key


# ------------------------------------------------------------------------------------------
# property test of the metadata validator: any JSON value in any field
# ------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(
        [
            "n_samples",
            "class_dim",
            "version",
            "task",
            "format",
            "tau",
            "standard_error_reached",
            "samples",
        ]
    ),
    _json,
)
def test_metadata_validator_accepts_only_valid_values(tmp_path, key, value):
    _classification().save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    meta = _meta(members)
    meta[key] = value
    path = _write(tmp_path / "prop.npz", members, meta)
    try:
        loaded = mcdrop.load_result(path)
    except ValueError:
        return
    # Accepted: the value must be one a valid file can hold.
    assert isinstance(loaded, mcdrop.ClassificationResult)
    valid = {
        "n_samples": lambda v: type(v) is int and v >= 1,
        "class_dim": lambda v: v in (1, -1),
        "version": lambda v: v == 1 and type(v) is int,
        "task": lambda v: v == "classification",
        "format": lambda v: v == "mcdrop-result",
        "tau": lambda v: False,  # not a field of a classification result
        "standard_error_reached": lambda v: (
            v is None or (type(v) in (int, float) and not math.isnan(v) and v >= 0)
        ),
        "samples": lambda v: v is None,
    }[key]
    assert valid(value)


# ------------------------------------------------------------------------------------------
# fuzzer: mutated bytes and mutated JSON; only ValueError escapes, the CLI exits 2 in one line
# ------------------------------------------------------------------------------------------


def _report(path: Path, out: Path) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["report", str(path), "--out", str(out), "--quiet"])
    return code, stderr.getvalue()


def _check_refused(path: Path, out: Path) -> bool:
    """``True`` when the file is refused (ValueError, then exit 2 with one line)."""
    try:
        mcdrop.load_result(path)
    except ValueError:
        code, stderr = _report(path, out)
        assert code == 2, stderr
        assert stderr.count("\n") == 1 and stderr.startswith("mcdrop: error: "), stderr
        return True
    return False


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4) if buf else 3
        pos = rng.randrange(len(buf)) if buf else 0
        if kind == 0:
            buf[pos] = rng.randrange(256)
        elif kind == 1:
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 2:
            del buf[pos : pos + rng.randint(1, 16)]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


@pytest.mark.parametrize("which", ["classification", "regression"])
def test_fuzzed_bytes_only_ever_raise_value_error(tmp_path, which):
    result = _classification(keep_samples=True) if which == "classification" else _regression()
    result.save(tmp_path / "ok.npz")
    data = (tmp_path / "ok.npz").read_bytes()
    rng = random.Random(11)
    refused = 0
    for i in range(300):
        path = tmp_path / f"fuzz{i % 4}.npz"
        path.write_bytes(_mutate_bytes(data, rng))
        try:
            mcdrop.load_result(path)
        except ValueError:
            refused += 1
            if i % 10 == 0:  # the CLI on a sample of the refused files (it is slower)
                assert _check_refused(path, tmp_path / "out")
    assert refused > 200


def _mutate_json(value, rng: random.Random, depth: int = 0):
    choices = [None, True, False, -1, 0, 1, 2.5, 10**30, float("nan"), "x", "\udcff", [], {}]
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        return dict(value, **{key: _mutate_json(value[key], rng, depth + 1)})
    if rng.random() < 0.1 and depth == 0:
        return [value]
    return rng.choice(choices)


@pytest.mark.parametrize("which", ["classification", "regression"])
def test_fuzzed_metadata_only_ever_raises_value_error(tmp_path, which):
    result = _classification() if which == "classification" else _regression()
    result.save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    meta = _meta(members)
    rng = random.Random(5)
    for i in range(150):
        mutated = _mutate_json(meta, rng)
        raw = json.dumps(mutated).encode("utf-8", "surrogatepass")
        if i % 5 == 0:  # byte-level damage to the JSON text itself
            raw = _mutate_bytes(raw, rng)
        path = tmp_path / "meta.npz"
        np.savez(path, **dict(members, __meta__=np.frombuffer(raw, np.uint8)))
        if not _check_refused(path, tmp_path / "out"):
            loaded = mcdrop.load_result(path)
            assert loaded.n_samples >= 1


def test_deeply_nested_json_is_a_value_error(tmp_path):
    _classification().save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    raw = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.npz"
    np.savez(path, **dict(members, __meta__=np.frombuffer(raw, np.uint8)))
    assert _check_refused(path, tmp_path / "out")
    raw = b"\xff\xfe not utf-8"
    np.savez(path, **dict(members, __meta__=np.frombuffer(raw, np.uint8)))
    assert _check_refused(path, tmp_path / "out")


# ------------------------------------------------------------------------------------------
# the sampling record (result.sampling): kept in the metadata, optional for older files
# ------------------------------------------------------------------------------------------


def _sampled() -> mcdrop.ClassificationResult:
    from mcdrop.results import SamplingRecord

    record = SamplingRecord(
        strategy="replicate",
        samples_per_pass=24,
        reason="auto, after vmap fell back",
        fallbacks=(("vmap", "RuntimeError: vmap: data-dependent control flow"),),
    )
    fields = _classification().to_dict()
    keep = ("mean", "variance", "predictive_entropy", "expected_entropy", "variation_ratio")
    return mcdrop.ClassificationResult(
        **{k: fields[k] for k in keep}, n_samples=6, targets=fields["targets"], sampling=record
    )


def test_the_sampling_record_round_trips_and_older_files_load_without_it(tmp_path):
    result = _sampled()
    result.save(tmp_path / "r.npz")
    meta = _meta(_members(tmp_path / "r.npz"))
    assert meta["sampling"]["fallbacks"] == [["vmap", result.sampling.fallbacks[0][1]]]
    assert mcdrop.load_result(tmp_path / "r.npz").sampling == result.sampling
    members = _members(tmp_path / "r.npz")
    del meta["sampling"]  # a file written before the record existed
    old = mcdrop.load_result(_write(tmp_path / "old.npz", members, meta))
    assert old.sampling is None
    assert torch.equal(old.mean, result.mean)


@pytest.mark.parametrize(
    "record",
    [
        "replicate",
        {"strategy": 3},
        {"strategy": "loop", "samples_per_pass": 0},
        {"strategy": "loop", "samples_per_pass": 2.5},
        {"strategy": "loop", "fallbacks": [["vmap"]]},
        {"strategy": "loop", "fallbacks": "vmap"},
        {"strategy": "loop", "reason": None},
        {"strategy": "loop", "surprise": 1},
        {"strategy": "x" * 5000},
    ],
)
def test_a_crafted_sampling_record_is_refused_naming_the_field(tmp_path, record):
    _sampled().save(tmp_path / "ok.npz")
    members = _members(tmp_path / "ok.npz")
    meta = _meta(members)
    meta["sampling"] = record
    assert "`sampling`" in _load_error(_write(tmp_path / "bad.npz", members, meta))


def test_masks_round_trip_and_version(tmp_path):
    """Independent results keep writing version 1 files (every mcdrop reads them); a result with
    shared masks writes version 2 with its ``masks`` field."""
    independent = _classification()
    shared = dataclasses.replace(independent, masks="shared")
    independent.save(tmp_path / "a.npz")
    shared.save(tmp_path / "b.npz")
    meta_a, meta_b = (_meta(_members(tmp_path / f"{n}.npz")) for n in "ab")
    assert meta_a["version"] == 1 and "masks" not in meta_a
    assert meta_b["version"] == 2 and meta_b["masks"] == "shared"
    assert mcdrop.load_result(tmp_path / "a.npz").masks == "independent"
    assert mcdrop.load_result(tmp_path / "b.npz").masks == "shared"
    with pytest.raises(ValueError, match="`masks`"):
        dataclasses.replace(independent, masks="both")
