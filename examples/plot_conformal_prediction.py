"""
Conformal prediction sets and intervals from MC dropout
=======================================================

Monte Carlo dropout gives each example a predictive distribution; split-conformal prediction
(:mod:`mcdrop.conformal`) turns it into *sets* of classes (or *intervals*) that contain the
truth with probability at least ``1 - alpha``, whatever the model, from a held-out calibration
set.

This example compares the LAC, APS and RAPS sets of a digits classifier, shows that the
coverage holds at every level, measures how temperature scaling changes the set sizes, and
builds intervals normalised by the MC predictive standard deviation for a regressor.
The numbers printed are those of this run.
"""

# %%
# A dropout classifier and four disjoint splits
# ---------------------------------------------
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.calibration import TemperatureScaling
from mcdrop.conformal import (
    ConformalCoverageDisplay,
    SplitConformalClassifier,
    SplitConformalRegressor,
    mean_set_size,
    set_coverage,
)

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
torch.manual_seed(0)

digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
# train on 300 images; 300 to fit a temperature, 500 to calibrate the sets, the rest to test
x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=300, random_state=0)
x_temp, x_rest, y_temp, y_rest = train_test_split(x_rest, y_rest, train_size=300, random_state=0)
x_cal, x_test, y_cal, y_test = train_test_split(x_rest, y_rest, train_size=500, random_state=0)

model = nn.Sequential(
    nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 128), nn.ReLU(),
    nn.Dropout(0.3), nn.Linear(128, 10),
)  # fmt: skip
optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
for _epoch in range(40 if QUICK else 150):
    for batch in torch.randperm(len(x_train)).split(50):
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
model.eval()

n_samples = 30 if QUICK else 100
mc = {
    name: mcdrop.predict_with_uncertainty(model, xs, targets=ys, n_samples=n_samples, seed=i)
    for i, (name, xs, ys) in enumerate(
        [("temp", x_temp, y_temp), ("cal", x_cal, y_cal), ("test", x_test, y_test)]
    )
}

# %%
# LAC, APS and RAPS at 95 % coverage
# ----------------------------------
# LAC keeps the classes whose probability exceeds a threshold (smallest sets on average); APS
# and RAPS add classes in order of probability until enough mass is covered, so their sets grow
# with the uncertainty of the example.
alpha = 0.05
print(f"{'method':<16}{'coverage':>10}{'mean size':>11}")
for method, randomized in [("lac", False), ("aps", False), ("aps", True), ("raps", True)]:
    conformal = SplitConformalClassifier(alpha=alpha, method=method, randomized=randomized)
    sets = conformal.fit(mc["cal"]).predict(mc["test"])
    name = method + (" (rand.)" if randomized else "")
    print(f"{name:<16}{set_coverage(sets, y_test):>10.3f}{mean_set_size(sets):>11.2f}")

# Larger sets go with larger epistemic uncertainty:
aps_sets = SplitConformalClassifier(alpha=alpha, method="aps").fit(mc["cal"]).predict(mc["test"])
size = aps_sets.sum(dim=1)
for k in sorted(set(size.tolist()))[:4]:
    mi = mc["test"].mutual_information[size == k].mean()
    print(f"APS sets of size {k}: {int((size == k).sum()):4d} examples, mean MI = {mi:.4f} nats")

# %%
# Temperature scaling and set sizes
# ---------------------------------
# A temperature fitted on its own split (not the calibration split) rescales the MC average;
# the conformal threshold is recomputed on the rescaled calibration probabilities, so the
# coverage guarantee holds either way, and only the set sizes change.
scaler = TemperatureScaling(inputs="probs").fit(mc["temp"].mean, y_temp)
print(f"\ntemperature fitted on the MC average: {scaler.temperature:.3f}")
scaled_cal = scaler.transform(mc["cal"].mean)
scaled_test = scaler.transform(mc["test"].mean)
print(f"{'method':<8}{'size before':>12}{'size after':>12}{'cov. before':>13}{'cov. after':>12}")
for method in ("lac", "aps", "raps"):
    before = SplitConformalClassifier(alpha=alpha, method=method).fit(mc["cal"])
    after = SplitConformalClassifier(alpha=alpha, method=method).fit(scaled_cal, y_cal)
    sets_before, sets_after = before.predict(mc["test"]), after.predict(scaled_test)
    print(
        f"{method:<8}{mean_set_size(sets_before):>12.2f}{mean_set_size(sets_after):>12.2f}"
        f"{set_coverage(sets_before, y_test):>13.3f}{set_coverage(sets_after, y_test):>12.3f}"
    )

# %%
# Coverage at every level
# -----------------------
# Empirical coverage against the nominal level ``1 - alpha``; the grey band is the range the
# empirical coverage of this many test examples would have at exactly the nominal level.
fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
for method in ("lac", "aps"):
    ConformalCoverageDisplay.from_results(
        SplitConformalClassifier(method=method), mc["cal"], mc["test"], name=method.upper(), ax=ax
    )

# %%
# Regression: intervals normalised by the MC predictive std
# ---------------------------------------------------------
# ``|y - mean| / std`` is the score, so the intervals ``mean -/+ q * std`` are wide where MC
# dropout is unsure; with ``std`` from dropout alone (no aleatoric head) the conformal ``q``
# absorbs the noise level.
rng = np.random.default_rng(0)
xr = rng.uniform(-3, 3, size=(1500, 1)).astype(np.float32)
yr = (np.sin(xr) + (0.1 + 0.2 * np.abs(xr)) * rng.normal(size=xr.shape)).astype(np.float32)
xr_t, yr_t = torch.from_numpy(xr), torch.from_numpy(yr)
reg = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 64), nn.ReLU(),
                    nn.Dropout(0.2), nn.Linear(64, 1))  # fmt: skip
optimiser = torch.optim.Adam(reg.parameters(), lr=3e-3)
for _step in range(300 if QUICK else 1500):
    batch = torch.randint(0, 500, (64,))
    loss = F.mse_loss(reg(xr_t[batch]), yr_t[batch])
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
reg.eval()
results = [
    mcdrop.predict_with_uncertainty(
        reg, xr_t[lo:hi], targets=yr_t[lo:hi], task="regression", n_samples=n_samples, seed=lo
    )
    for lo, hi in [(500, 1000), (1000, 1500)]
]
regressor = SplitConformalRegressor(alpha=0.1).fit(results[0])
lower, upper = regressor.predict(results[1])
inside = ((yr_t[1000:] >= lower) & (yr_t[1000:] <= upper)).double().mean()
print(f"\nregression: q = {regressor.quantile_:.2f} std, coverage = {inside:.3f} (target 0.90)")

order = np.argsort(xr[1000:, 0])
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
ax.scatter(xr[1000:, 0], yr[1000:, 0], s=4, color="0.5", label="test points")
ax.fill_between(xr[1000:, 0][order], lower[order, 0], upper[order, 0], alpha=0.3,
                label="90 % conformal interval")  # fmt: skip
ax.plot(xr[1000:, 0][order], results[1].mean[order, 0], color="C0", label="MC mean")
ax.set(xlabel="x", ylabel="y", title="Intervals mean ± q · std from MC dropout")
ax.legend(loc="upper left", fontsize="small")


# %%
# Run as a script (``python examples/plot_conformal_prediction.py``), the example also saves its figures as
# ``plot_conformal_prediction_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_conformal_prediction_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_conformal_prediction_N.png")
