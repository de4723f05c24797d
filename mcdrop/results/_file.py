"""The ``.npz`` result file: one schema, checked when a result is saved and when it is loaded.

A result file is a zip archive of ``.npy`` members (NumPy's ``savez``): ``__meta__`` holds the
UTF-8 JSON metadata (format, version, task and the scalar fields), every other member one array
field of the result. Loading never unpickles and checks, in this order, so that a crafted file
can neither run code nor make mcdrop allocate more than the file declares:

1. the archive's member list (known fields only, no duplicates, sizes the zip can back);
2. the metadata (types and ranges of every scalar field);
3. every array's ``.npy`` header: dtype, and shape consistent with ``mean``, ``class_dim`` and
   ``n_samples``, and the member's size equal to what the header declares -- before any data
   is read;
4. the values (finite means, probabilities in [0, 1] that sum to one along ``class_dim``,
   non-negative variances, entropies in ``[0, log C]``, variation ratios in [0, 1]).

Every failure is a ``ValueError`` that names the file and the field.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import zipfile
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

import numpy as np

__all__: list[str] = []

FORMAT = "mcdrop-result"
FORMAT_VERSION = 2  # 2: the ``masks`` field (written only for shared masks)
MASK_KINDS = ("independent", "shared")
_MAX_META_BYTES = 1 << 20
_DEFLATE_MAX_RATIO = 1100  # deflate cannot compress better than ~1032:1
_PROB_TOL = 1e-3  # probabilities may have been accumulated in float32
_MAX_N_SAMPLES = 2**62


@dataclass(frozen=True)
class _Task:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    scalars: tuple[str, ...]


_OPTIONAL = ("targets", "samples", "standard_error")
_TASKS = {
    "classification": _Task(
        ("mean", "variance", "predictive_entropy", "expected_entropy", "variation_ratio"),
        _OPTIONAL,
        ("class_dim",),
    ),
    "regression": _Task(("mean", "epistemic_variance", "aleatoric_variance"), _OPTIONAL, ("tau",)),
}
_HEADER_KEYS = (
    "format",
    "version",
    "task",
    "n_samples",
    "standard_error_reached",
    "sampling",
    "masks",
)
_MAX_TEXT = 4096  # characters of a string in the sampling record


class _Schema:
    """Checks of one file (or of one result about to be saved); ``where`` names it in errors."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, field: str, message: str) -> ValueError:
        return ValueError(
            f"Expected `path` to be a valid mcdrop result file, but in {self.where} field "
            f"`{field}` {message}."
        )

    # -- metadata --------------------------------------------------------------------------
    def meta(self, meta: Any) -> _Task:
        if not isinstance(meta, dict):
            raise self.error("__meta__", f"is a JSON {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"Expected `path` to be an mcdrop result file, but {self.where} is not one "
                f"(format {str(meta.get('format'))[:40]!r})."
            )
        version = meta.get("version")
        if not _is_int(version) or version < 1:
            raise self.error("version", f"is {_show(version)}, not an integer >= 1")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"Expected a result file of format version <= {FORMAT_VERSION}, but "
                f"{self.where} has version {version}; upgrade mcdrop to read it."
            )
        task_name = meta.get("task")
        if not isinstance(task_name, str) or task_name not in _TASKS:
            raise self.error("task", f"is {_show(task_name)}, not one of {sorted(_TASKS)}")
        task = _TASKS[task_name]
        known = {*_HEADER_KEYS, *task.scalars, *task.optional}
        for key in meta:
            if key not in known:
                raise self.error(str(key)[:40], "is not a field of a " + task_name + " result")
        n = meta.get("n_samples")
        if not _is_int(n) or not 1 <= n <= _MAX_N_SAMPLES:
            raise self.error("n_samples", f"is {_show(n)}, not an integer >= 1")
        if "class_dim" in meta and not _is_int(meta["class_dim"]):
            raise self.error("class_dim", f"is {_show(meta['class_dim'])}, not an integer")
        tau = meta.get("tau")
        if tau is not None and not (_is_real(tau) and math.isfinite(tau) and tau > 0):
            raise self.error("tau", f"is {_show(tau)}, not a finite number > 0 or null")
        reached = meta.get("standard_error_reached")
        if reached is not None and not (_is_real(reached) and reached >= 0):
            raise self.error(
                "standard_error_reached", f"is {_show(reached)}, not a number >= 0 or null"
            )
        if meta.get("sampling") is not None:
            self.sampling(meta["sampling"])
        masks = meta.get("masks", "independent")
        if not isinstance(masks, str) or masks not in MASK_KINDS:
            raise self.error("masks", f"is {_show(masks)}, not one of {list(MASK_KINDS)}")
        for key in task.optional:
            if meta.get(key) is not None:
                raise self.error(key, f"is {_show(meta[key])} in the metadata, not an array")
        return task

    def sampling(self, record: Any) -> None:
        """The sampling record (:class:`mcdrop.results.SamplingRecord`, optional: files written
        before it existed have none)."""
        if not isinstance(record, dict) or set(record) - {
            "strategy",
            "samples_per_pass",
            "reason",
            "fallbacks",
        }:
            raise self.error("sampling", f"is {_show(record)}, not a sampling record")
        if not _is_text(record.get("strategy")):
            raise self.error("sampling", "has no strategy")
        if not _is_text(record.get("reason", "")):
            raise self.error("sampling", "has a reason that is not a string")
        per_pass = record.get("samples_per_pass")
        if per_pass is not None and not (_is_int(per_pass) and 1 <= per_pass <= _MAX_N_SAMPLES):
            raise self.error("sampling", f"has samples_per_pass {_show(per_pass)}")
        fallbacks = record.get("fallbacks", [])
        if not isinstance(fallbacks, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(_is_text(p) for p in pair)
            for pair in fallbacks
        ):
            raise self.error("sampling", "has fallbacks that are not [strategy, reason] pairs")

    # -- shapes and dtypes (from the .npy headers, before any data is read) -----------------
    def layout(
        self, meta: dict[str, Any], task: _Task, headers: dict[str, tuple[tuple[int, ...], Any]]
    ) -> None:
        allowed = {*task.required, *task.optional}
        for name in headers:
            if name not in allowed:
                raise self.error(name[:40], f"is not a field of a {meta['task']} result")
        for name in task.required:
            if name not in headers:
                raise self.error(name, "is missing")
        for name, (_, dtype) in headers.items():
            self.dtype(name, dtype)
        mean_shape = headers["mean"][0]
        classification = meta["task"] == "classification"
        min_ndim = 2 if classification else 1
        if len(mean_shape) < min_ndim or 0 in mean_shape:
            expected = "(N, C, *S)" if classification else "(N, *S)"
            raise self.error("mean", f"has shape {mean_shape}, not a non-empty {expected}")
        per_example = mean_shape
        if classification:
            cd = meta.get("class_dim", 1)
            ndim = len(mean_shape)
            if not -ndim < cd < ndim or cd % ndim == 0:
                raise self.error(
                    "class_dim", f"is {cd}, not a dimension of `mean` {mean_shape} after the first"
                )
            cd %= ndim
            per_example = mean_shape[:cd] + mean_shape[cd + 1 :]
        expected_shapes = {
            "variance": mean_shape,
            "epistemic_variance": mean_shape,
            "aleatoric_variance": mean_shape,
            "standard_error": mean_shape,
            "predictive_entropy": per_example,
            "expected_entropy": per_example,
            "variation_ratio": per_example,
            "samples": (meta["n_samples"], *mean_shape),
        }
        for name, (shape, _) in headers.items():
            want = expected_shapes.get(name)
            if want is not None and tuple(shape) != tuple(want):
                why = "`n_samples` and `mean`" if name == "samples" else "`mean`"
                raise self.error(
                    name, f"has shape {shape}, not {want} (as {why} of shape {mean_shape} imply)"
                )
        if "targets" in headers:
            shape = headers["targets"][0]
            if len(shape) == 0 or shape[0] != mean_shape[0]:
                raise self.error("targets", f"has shape {shape}, not ({mean_shape[0]}, ...)")

    def dtype(self, name: str, dtype: Any) -> None:
        dtype = np.dtype(dtype)
        kinds = "biuf" if name == "targets" else "f"
        if (
            dtype.hasobject
            or dtype.names is not None
            or dtype.shape != ()
            or dtype.kind not in kinds
            or dtype.itemsize > 8
        ):
            expected = "booleans, integers or floats" if name == "targets" else "floats"
            raise self.error(name, f"has dtype {dtype.str!r}, not {expected}")

    # -- values ----------------------------------------------------------------------------
    def values(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        classification = meta["task"] == "classification"
        mean = arrays["mean"]
        self._range("mean", mean, -math.inf, math.inf, finite=True)
        if classification:
            cd = meta.get("class_dim", 1) % mean.ndim
            n_classes = mean.shape[cd]
            self._range("mean", mean, -_PROB_TOL, 1 + _PROB_TOL)
            sums = mean.sum(axis=cd, dtype=np.float64)
            worst = float(np.max(np.abs(sums - 1.0)))
            if worst > _PROB_TOL:
                raise self.error("mean", f"has rows that do not sum to 1 (off by {worst:.3g})")
            top = math.log(n_classes) + _PROB_TOL
            self._range("variance", arrays["variance"], 0.0, 0.25 + _PROB_TOL)
            self._range("predictive_entropy", arrays["predictive_entropy"], -_PROB_TOL, top)
            self._range("expected_entropy", arrays["expected_entropy"], -_PROB_TOL, top)
            self._range("variation_ratio", arrays["variation_ratio"], 0.0, 1.0)
            if "samples" in arrays:
                self._range("samples", arrays["samples"], -_PROB_TOL, 1 + _PROB_TOL)
        else:
            self._range("epistemic_variance", arrays["epistemic_variance"], 0.0, math.inf)
            self._range("aleatoric_variance", arrays["aleatoric_variance"], 0.0, math.inf)
            if "samples" in arrays:
                self._range("samples", arrays["samples"], -math.inf, math.inf, finite=True)
        if "standard_error" in arrays:
            self._range("standard_error", arrays["standard_error"], 0.0, math.inf)

    def _range(
        self, name: str, array: np.ndarray, low: float, high: float, *, finite: bool = False
    ) -> None:
        if np.any(np.isnan(array)):
            raise self.error(name, "holds NaN")
        if finite and not np.all(np.isfinite(array)):
            raise self.error(name, "holds infinite values")
        lo, hi = float(np.min(array)), float(np.max(array))
        if lo < low or hi > high:
            raise self.error(name, f"holds values from {lo:g} to {hi:g}, outside [{low}, {high}]")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_text(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= _MAX_TEXT


def _is_real(value: Any) -> TypeGuard[float]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else None
    if text is None:
        text = f"a JSON {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def check_result(meta: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> None:
    """Check a result about to be saved against the schema (``ValueError`` naming the field)."""
    schema = _Schema(where)
    task = schema.meta(meta)
    schema.layout(meta, task, {k: (tuple(v.shape), v.dtype) for k, v in arrays.items()})
    schema.values(meta, arrays)


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------


def read_result_file(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and arrays of the result file at ``path``, checked against the schema."""
    schema = _Schema(repr(path))
    try:
        archive = zipfile.ZipFile(path)
    except Exception as error:  # BadZipFile, IsADirectoryError, OSError, ...
        raise ValueError(
            f"Expected `path` to be an mcdrop result file (.npz), but could not read {path!r}: "
            f"{_one_line(error)}"
        ) from None
    with archive:
        members = _members(schema, archive, os.path.getsize(path))
        if "__meta__" not in members:
            raise ValueError(
                f"Expected `path` to be an mcdrop result file, but {path!r} has no metadata."
            )
        meta = _read_meta(schema, archive, members.pop("__meta__"))
        task = schema.meta(meta)
        headers = {
            name: _read_header(schema, archive, name, info) for name, info in members.items()
        }
        schema.layout(meta, task, {name: (h[0], h[2]) for name, h in headers.items()})
        arrays = {
            name: _read_data(schema, archive, name, members[name], header)
            for name, header in headers.items()
        }
    schema.values(meta, arrays)
    return meta, arrays


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:200]


def _members(schema: _Schema, archive: zipfile.ZipFile, file_size: int) -> dict[str, Any]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise schema.error(name[:40], "is not an .npy array member")
        field = name[: -len(".npy")]
        if field in members:
            raise schema.error(field[:40], "appears twice in the archive")
        if info.compress_type == zipfile.ZIP_STORED:
            backed = info.compress_size == info.file_size and info.file_size <= file_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            backed = info.file_size <= _DEFLATE_MAX_RATIO * max(info.compress_size, 1) + 1024
            backed = backed and info.compress_size <= file_size
        else:
            raise schema.error(field[:40], f"uses zip compression method {info.compress_type}")
        if not backed:
            raise schema.error(
                field[:40],
                f"declares {info.file_size} bytes that the {file_size}-byte file cannot hold",
            )
        members[field] = info
    return members


def _read_header(
    schema: _Schema, archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo
) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """``(shape, fortran_order, dtype, data_offset)`` of an ``.npy`` member, data unread.

    The dtype is checked (bytes for ``__meta__``, the field's dtype otherwise) and the member's
    size must be exactly the header plus the data the header declares.
    """
    try:
        with archive.open(info) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = fp.tell()
    except Exception as error:  # bad magic, header syntax, truncated member, bad CRC, ...
        raise schema.error(name, f"has an unreadable .npy header ({_one_line(error)})") from None
    if not isinstance(shape, tuple) or not all(_is_int(s) and s >= 0 for s in shape):
        raise schema.error(name, f"has an invalid shape {shape!r}")
    if name == "__meta__":
        if dtype != np.dtype(np.uint8) or len(shape) != 1:
            raise schema.error(name, f"is {dtype} of shape {shape}, not bytes (uint8)")
    else:
        schema.dtype(name, dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise schema.error(
            name,
            f"declares shape {shape} of {dtype.str} ({nbytes} bytes) but its member holds "
            f"{info.file_size - offset} bytes of data",
        )
    return tuple(int(s) for s in shape), bool(fortran), dtype, offset


def _read_data(
    schema: _Schema,
    archive: zipfile.ZipFile,
    name: str,
    info: zipfile.ZipInfo,
    header: tuple[tuple[int, ...], bool, np.dtype[Any], int],
) -> np.ndarray:
    shape, fortran, dtype, offset = header
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        with archive.open(info) as fp:
            fp.read(offset)
            buffer = bytearray(nbytes)
            got = cast(zipfile.ZipExtFile, fp).readinto(buffer)
            fp.read()  # to the end, so that zipfile checks the CRC
    except Exception as error:  # truncated member, bad CRC, ...
        raise schema.error(name, f"cannot be read ({_one_line(error)})") from None
    if got != nbytes:
        raise schema.error(name, f"holds {got} bytes of data, not {nbytes}")
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))


def _read_meta(schema: _Schema, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    if info.file_size > _MAX_META_BYTES:
        raise schema.error("__meta__", f"has {info.file_size} bytes, more than metadata needs")
    header = _read_header(schema, archive, "__meta__", info)
    raw = _read_data(schema, archive, "__meta__", info, header)
    try:
        return json.loads(raw.tobytes().decode("utf-8"))
    except Exception as error:  # UnicodeDecodeError, JSONDecodeError, RecursionError
        raise schema.error("__meta__", f"is not UTF-8 JSON ({_one_line(error)})") from None
