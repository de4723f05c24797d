"""Alias of :mod:`mcdrop.integrations.torchmetrics` (the import path of earlier releases)."""

import sys

from mcdrop.integrations import torchmetrics as _module

sys.modules[__name__] = _module
