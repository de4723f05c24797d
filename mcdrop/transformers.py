"""Alias of :mod:`mcdrop.integrations.huggingface` (the import path of earlier releases)."""

import sys

from mcdrop.integrations import huggingface as _module

sys.modules[__name__] = _module
