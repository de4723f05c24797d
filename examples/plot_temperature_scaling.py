"""
Temperature scaling vs Monte Carlo dropout calibration
======================================================

Two ways to make a classifier's confidence honest, compared on the same network:

* **temperature scaling** (Guo et al., 2017) divides the logits by one scalar ``T`` fitted on
  a validation set: it changes the confidence, never the predicted class;
* **Monte Carlo dropout** averages the softmax outputs of ``T`` stochastic passes;
* and both: temperature scaling fitted on the MC dropout average
  (``TemperatureScaling(inputs="probs")``).

The network is trained long on few examples, which tends to make its softmax overconfident.
Compare the tables and reliability diagrams below; the numbers are those of this run.
"""

# %%
# An overfitted digits classifier
# -------------------------------
import os
import sys

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.calibration import TemperatureScaling
from mcdrop.metrics import evaluate, format_table
from mcdrop.plot import ReliabilityDisplay

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
torch.manual_seed(0)

digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
# 300 training images, 500 for validation (fitting the temperature), the rest for testing
x_train, x_rest, y_train, y_rest = train_test_split(
    x, y, train_size=300, stratify=y, random_state=0
)
x_val, x_test, y_val, y_test = train_test_split(
    x_rest, y_rest, train_size=500, stratify=y_rest, random_state=0
)

model = nn.Sequential(
    nn.Linear(64, 256),
    nn.ReLU(),
    nn.Dropout(0.25),
    nn.Linear(256, 256),
    nn.ReLU(),
    nn.Dropout(0.25),
    nn.Linear(256, 10),
)
optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
for _epoch in range(60 if QUICK else 200):
    for batch in torch.randperm(len(x_train)).split(50):
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
model.eval()

# %%
# Four predictive distributions on the test set
# ---------------------------------------------
n_samples = 30 if QUICK else 100
with torch.inference_mode():
    val_logits, test_logits = model(x_val), model(x_test)
mc_val = mcdrop.predict_with_uncertainty(model, x_val, n_samples=n_samples, seed=0)
mc_test = mcdrop.predict_with_uncertainty(model, x_test, n_samples=n_samples, seed=1)

scaler = TemperatureScaling().fit(val_logits, y_val)
mc_scaler = TemperatureScaling(inputs="probs").fit(mc_val.mean, y_val)
print(f"temperature of the deterministic logits: {scaler.temperature:.3f}")
print(f"temperature of the MC dropout average:   {mc_scaler.temperature:.3f}")

predictions = {
    "deterministic": torch.softmax(test_logits, dim=1),
    "temperature-scaled": scaler.transform(test_logits),
    "MC dropout": mc_test.mean,
    "MC dropout + temperature": mc_scaler.transform(mc_test.mean),
}
columns = ("accuracy", "nll", "brier", "ece", "mce")
table = {name: evaluate(probs, y_test) for name, probs in predictions.items()}
print(format_table({name: {k: m[k] for k in columns} for name, m in table.items()}))

# %%
# Reliability diagrams
# --------------------
fig = plt.figure(figsize=(14, 4.8), layout="constrained")
grid = fig.add_gridspec(2, 4, height_ratios=(3, 1))
for column, (name, probs) in enumerate(predictions.items()):
    ax = fig.add_subplot(grid[0, column])
    hist_ax = fig.add_subplot(grid[1, column], sharex=ax)
    display = ReliabilityDisplay.from_predictions(
        y_test, probs, n_bins=10, name=name, ax=ax, hist_ax=hist_ax, color=f"C{column}"
    )
    ax.set_title(f"{name}\nECE = {display.ece:.3f}", fontsize="medium")
    ax.get_legend().remove()
fig.suptitle(
    "Bars: accuracy per confidence bin; hatched: gap to the diagonal of perfect calibration"
)

# %%
# Temperature scaling needs labelled validation data and leaves the ranking of the examples
# unchanged; MC dropout needs no extra data but ``T`` forward passes, and also gives the
# per-example epistemic uncertainty (``mc_test.mutual_information``). The two combine.


# %%
# Run as a script (``python examples/plot_temperature_scaling.py``), the example also saves its figures as
# ``plot_temperature_scaling_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_temperature_scaling_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_temperature_scaling_N.png")
