"""Integrations with other libraries, each imported only when used.

:mod:`mcdrop.integrations.lightning`
    A Lightning callback that samples validation, test and predict batches.
:mod:`mcdrop.integrations.huggingface`
    Hugging Face Transformers: text classification with uncertainty, a ``Trainer`` callback.
:mod:`mcdrop.integrations.torchmetrics`
    The metrics of :mod:`mcdrop.metrics` as streaming ``torchmetrics.Metric`` objects.

They use mcdrop's public API only. The old paths ``mcdrop.integrations.lightning``, ``mcdrop.integrations.huggingface``
and ``mcdrop.integrations.torchmetrics`` are aliases of these modules.
"""
