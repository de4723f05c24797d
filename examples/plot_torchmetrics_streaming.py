"""
Streaming uncertainty metrics with torchmetrics
===============================================

:mod:`mcdrop.integrations.torchmetrics` holds :class:`torchmetrics.Metric` versions of mcdrop's calibration
and uncertainty metrics: ``update`` them batch by batch with MC dropout results, ``compute``
at the end, and under DDP their states are reduced across processes like any torchmetrics
metric. Their values equal :mod:`mcdrop.metrics` on all the data at once. Install with
``pip install "mcdrop[torchmetrics]"``. The numbers printed are those of this run.
"""

# %%
# A dropout classifier and a stream of batches
# --------------------------------------------
import os
import sys

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import mcdrop
from mcdrop import metrics
from mcdrop.integrations.torchmetrics import (
    BrierScore,
    CalibrationError,
    MisclassificationAUROC,
    NegativeLogLikelihood,
)

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))
optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
for _step in range(100 if QUICK else 300):
    batch = torch.randint(0, 800, (64,))
    loss = F.cross_entropy(model(x[batch]), y[batch])
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
model.eval()
stream = DataLoader(TensorDataset(x[800:], y[800:]), batch_size=100)

# %%
# Update per batch, compute once
# ------------------------------
streaming = {
    "nll": NegativeLogLikelihood(),
    "brier": BrierScore(),
    "ece": CalibrationError(n_bins=15),
    "misclassification_auroc": MisclassificationAUROC(score="mutual_information"),
}
running_ece = []
batches = []
n_samples = 20 if QUICK else 50
for index, (xb, yb) in enumerate(stream):
    result = mcdrop.predict_with_uncertainty(model, xb, targets=yb, n_samples=n_samples, seed=index)
    batches.append(result)
    for metric in streaming.values():
        metric.update(result)
    running_ece.append(float(streaming["ece"].compute()))

# %%
# The same numbers as the functional metrics on everything at once
probs = torch.cat([r.mean for r in batches])
labels = torch.cat([r.targets for r in batches])
mi = torch.cat([r.mutual_information for r in batches])
functional = {
    "nll": metrics.negative_log_likelihood(labels, probs),
    "brier": metrics.brier_score(labels, probs),
    "ece": metrics.expected_calibration_error(labels, probs, n_bins=15),
    "misclassification_auroc": metrics.misclassification_auroc(labels, probs, mi),
}
for name, metric in streaming.items():
    print(
        f"{name:<25} streaming {float(metric.compute()):.10f}  functional {functional[name]:.10f}"
    )

# %%
# Merging states, as DDP does: two "ranks" with half the batches each
rank0, rank1 = CalibrationError(n_bins=15), CalibrationError(n_bins=15)
for index, result in enumerate(batches):
    (rank0 if index % 2 == 0 else rank1).update(result)
rank0.merge_state(rank1)
print(f"ECE after merging two ranks' states: {float(rank0.compute()):.10f}")

fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
ax.plot(range(1, len(running_ece) + 1), running_ece, marker="o")
ax.axhline(functional["ece"], color="0.5", linestyle=":", label="ECE on all the data")
ax.set(xlabel="batches seen", ylabel="ECE so far", title="Streaming ECE of MC dropout")
ax.legend()


# %%
# Run as a script (``python examples/plot_torchmetrics_streaming.py``), the example also saves its figures as
# ``plot_torchmetrics_streaming_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_torchmetrics_streaming_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_torchmetrics_streaming_N.png")
