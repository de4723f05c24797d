"""Alias of :mod:`mcdrop.stats` (the import path of earlier releases)."""

from __future__ import annotations

from mcdrop.stats import summarize_samples

__all__ = ["summarize_samples"]
