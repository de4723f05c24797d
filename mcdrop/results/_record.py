"""How a result was sampled: the strategy, the samples per pass, the fallbacks and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SamplingRecord"]


@dataclass(frozen=True)
class SamplingRecord:
    """The plan a call sampled with, kept on its result (``result.sampling``).

    Parameters
    ----------
    strategy : str
        The strategy the passes ran with (``"vmap"``, ``"replicate"`` or ``"loop"``): what
        ``strategy="auto"`` settled on.
    samples_per_pass : int or None
        The most samples one forward pass held (lower after an out-of-memory back-off).
    reason : str, default=""
        Why the plan chose ``strategy``.
    fallbacks : tuple of (str, str), default=()
        The ``auto`` candidates that proved invalid on the first chunk, in order, each with the
        reason: ``(("vmap", "RuntimeError: ..."),)``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import mcdrop
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)).eval()
    >>> result = mcdrop.predict_with_uncertainty(net, torch.randn(8, 4), n_samples=20, seed=0)
    >>> result.sampling.strategy, result.sampling.fallbacks
    ('vmap', ())
    """

    strategy: str
    samples_per_pass: int | None = None
    reason: str = ""
    fallbacks: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        """One line for the strategy and samples per pass, one per fallback with its reason."""
        per_pass = "" if self.samples_per_pass is None else f", {self.samples_per_pass} per pass"
        lines = [f"strategy {self.strategy!r}{per_pass}"]
        lines += [f"fell back from {name!r}: {why}" for name, why in self.fallbacks]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON object (the result file keeps it in its metadata)."""
        return {
            "strategy": self.strategy,
            "samples_per_pass": self.samples_per_pass,
            "reason": self.reason,
            "fallbacks": [list(pair) for pair in self.fallbacks],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SamplingRecord:
        """The record of :meth:`to_json` (already checked by the file's schema)."""
        return cls(
            strategy=value["strategy"],
            samples_per_pass=value.get("samples_per_pass"),
            reason=value.get("reason", ""),
            fallbacks=tuple((str(a), str(b)) for a, b in value.get("fallbacks", ())),
        )
