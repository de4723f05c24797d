"""
Regression with a heteroscedastic head: epistemic and total predictive bands
============================================================================

A regression network with two outputs, a mean and a log-variance, trained with the Gaussian
negative log-likelihood (Kendall & Gal, 2017), learns the noise level of the data (aleatoric
uncertainty). Monte Carlo dropout adds the spread of the mean over the dropout masks
(epistemic uncertainty), which grows away from the training data.
:func:`mcdrop.predict_with_uncertainty` with ``heteroscedastic=True`` returns both:

* ``result.epistemic_variance``: variance of the sampled means;
* ``result.aleatoric_variance``: average of the sampled ``exp(log_variance)``;
* ``result.variance``: their sum, the total predictive variance.
"""

# %%
# Data: noise that grows with x, and a gap without training points
# -----------------------------------------------------------------
import os
import sys

import matplotlib.pyplot as plt
import torch
from torch import nn

import mcdrop
from mcdrop.metrics import evaluate, format_table
from mcdrop.plot import PredictiveBandsDisplay, RegressionCalibrationDisplay

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
torch.manual_seed(0)


def sample(n: int, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.empty(n, 1).uniform_(low, high)
    noise_std = 0.1 + 0.15 * (x + 4.0) / 2.0  # heteroscedastic: from 0.1 to 0.7
    return x, torch.sin(x) + noise_std * torch.randn(n, 1)


x_left, y_left = sample(300, -4.0, -0.5)
x_right, y_right = sample(150, 1.5, 4.0)
x_train, y_train = torch.cat([x_left, x_right]), torch.cat([y_left, y_right])
x_test, y_test = sample(500, -4.0, 4.0)  # covers the gap (-0.5, 1.5) too

# %%
# Model: a mean and a log-variance head, dropout in the trunk
# -----------------------------------------------------------
# ``predict_with_uncertainty(..., heteroscedastic=True)`` expects the model to return
# ``(mean, log_variance)`` (or a dict with those keys).


class HeteroscedasticMLP(nn.Module):
    def __init__(self, hidden: int = 64, p: float = 0.1) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(1, hidden),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(p),
        )
        self.mean = nn.Linear(hidden, 1)
        self.log_variance = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.mean(h), self.log_variance(h)


model = HeteroscedasticMLP()
optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
gaussian_nll = nn.GaussianNLLLoss()
for _step in range(600 if QUICK else 2500):
    batch = torch.randint(0, len(x_train), (128,))
    mean, log_variance = model(x_train[batch])
    loss = gaussian_nll(mean, y_train[batch], log_variance.exp())
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
model.eval()

# %%
# Predictive bands
# ----------------
# The darker band is the 95 % epistemic interval, the lighter one the 95 % total predictive
# interval. Compare their widths inside the gap and on the training data.
grid = torch.linspace(-5.0, 5.0, 400).unsqueeze(1)
n_samples = 50 if QUICK else 200
bands = mcdrop.predict_with_uncertainty(
    model, grid, task="regression", heteroscedastic=True, n_samples=n_samples, seed=0
)
fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
display = PredictiveBandsDisplay.from_result(
    bands, grid, x_train=x_train, y_train=y_train, name="MC dropout mean", ax=ax
)
display.ax_.plot(grid, torch.sin(grid), color="black", linewidth=1, linestyle=":", label="sin(x)")
display.ax_.axvspan(-0.5, 1.5, color="0.9", zorder=0, label="no training data")
display.ax_.get_legend().remove()
fig.legend(loc="outside lower center", ncol=2, fontsize="small")

# %%
# The two parts of the variance along x:
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.plot(grid, bands.epistemic_variance.sqrt(), label="epistemic std")
ax.plot(grid, bands.aleatoric_variance.sqrt(), label="aleatoric std")
data_range = torch.linspace(-4.0, 4.0, 100)
ax.plot(data_range, 0.1 + 0.15 * (data_range + 4.0) / 2.0, "k:", label="true noise std")
ax.axvspan(-0.5, 1.5, color="0.9", zorder=0)
ax.set(xlabel="x", ylabel="standard deviation", ylim=(0, None))
ax.legend(fontsize="small")

# %%
# Calibration of the intervals on held-out data
# ---------------------------------------------
# :func:`mcdrop.metrics.evaluate` scores the predictive distribution; ``picp_95`` is the
# fraction of test targets inside the central 95 % interval (0.95 for calibrated intervals).
test = mcdrop.predict_with_uncertainty(
    model,
    x_test,
    targets=y_test,
    task="regression",
    heteroscedastic=True,
    n_samples=n_samples,
    seed=1,
)
columns = ("rmse", "gaussian_nll", "picp_95", "mean_width_95", "crps")
print(format_table({"MC dropout": {k: evaluate(test)[k] for k in columns}}))

fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
RegressionCalibrationDisplay.from_result(test, kind="total", name="total variance", ax=ax)
RegressionCalibrationDisplay.from_result(test, kind="epistemic", name="epistemic only", ax=ax)


# %%
# Run as a script (``python examples/plot_regression_heteroscedastic.py``), the example also saves its figures as
# ``plot_regression_heteroscedastic_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_regression_heteroscedastic_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_regression_heteroscedastic_N.png")
