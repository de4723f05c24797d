"""
Quickstart: uncertainty for a digits classifier
===============================================

Train a small network with dropout on scikit-learn's 8x8 digits, then ask
:func:`mcdrop.predict_with_uncertainty` for its Monte Carlo dropout predictive distribution:
the average of ``T`` stochastic forward passes with dropout switched on, plus the usual
uncertainty measures (predictive entropy, mutual information, ...). The reliability diagram
shows how well the predicted confidence matches the accuracy.
"""

# %%
# Data and model
# --------------
# Any trained :class:`torch.nn.Module` with dropout works; nothing about the model changes.
import os
import sys

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.metrics import evaluate, format_table
from mcdrop.plot import ReliabilityDisplay

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
torch.manual_seed(0)

digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)  # (1797, 64), pixels in [0, 1]
y = torch.tensor(digits.target)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, stratify=y, random_state=0)

model = nn.Sequential(
    nn.Linear(64, 128),
    nn.ReLU(),
    nn.Dropout(0.3),
    nn.Linear(128, 128),
    nn.ReLU(),
    nn.Dropout(0.3),
    nn.Linear(128, 10),
)
optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
for _epoch in range(10 if QUICK else 40):
    for batch in torch.randperm(len(x_train)).split(64):
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
model.eval()

# %%
# Monte Carlo dropout
# -------------------
# :func:`mcdrop.dropout_sites` lists the modules that will sample, and why. Only those switch
# on; everything else (normalisation layers in particular) stays in eval mode.
for site in mcdrop.dropout_sites(model):
    print(site)

result = mcdrop.predict_with_uncertainty(
    model, x_test, targets=y_test, n_samples=20 if QUICK else 100, seed=0
)
print(result.mean.shape, result.predictive_entropy.shape, result.mutual_information.shape)

# %%
# Compare with the deterministic network (dropout off) on the same test images.
# :func:`mcdrop.metrics.evaluate` returns the headline metrics by name.
with torch.inference_mode():
    deterministic = torch.softmax(model(x_test), dim=1)

columns = ("accuracy", "nll", "brier", "ece")
rows = {
    "deterministic": evaluate(deterministic, y_test),
    "MC dropout": evaluate(result),  # the labels are stored on the result
}
print(format_table({name: {k: m[k] for k in columns} for name, m in rows.items()}))

# %%
# Reliability diagram
# -------------------
# Bars show the accuracy per confidence bin, hatched bars the gap to a perfectly calibrated
# model; the histogram underneath shows how many predictions fall into each bin.
ReliabilityDisplay.from_result(result, name="MC dropout")

# %%
# The most uncertain test images
# ------------------------------
# The mutual information between the prediction and the dropout masks (BALD) is high where the
# sampled networks disagree: model (epistemic) uncertainty.
order = torch.argsort(result.mutual_information, descending=True)[:8]
fig, axes = plt.subplots(1, 8, figsize=(12, 2.2), layout="constrained")
for ax, i in zip(axes, order.tolist(), strict=True):
    ax.imshow(x_test[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(
        f"pred {int(result.predicted_class[i])}, true {int(y_test[i])}\n"
        f"MI {float(result.mutual_information[i]):.2f}",
        fontsize=9,
    )
    ax.axis("off")


# %%
# Run as a script (``python examples/plot_quickstart.py``), the example also saves its figures as
# ``plot_quickstart_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_quickstart_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_quickstart_N.png")
