"""Alias of :mod:`mcdrop.integrations.lightning` (the import path of earlier releases)."""

import sys

from mcdrop.integrations import lightning as _module

sys.modules[__name__] = _module
