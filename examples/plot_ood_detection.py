"""
Out-of-distribution detection: mutual information vs predictive entropy
=======================================================================

A classifier trained on the digits 0-4 sees the digits 5-9 at test time: inputs of classes it
has never seen. Can its uncertainty tell them apart from new images of 0-4? We score every
test image with three uncertainty measures and report the AUROC of separating the two groups
(1.0 = perfect, 0.5 = chance):

* ``1 - max softmax`` of the deterministic network (the usual baseline);
* predictive entropy ``H[E_t p_t]`` of the MC dropout average: total uncertainty;
* mutual information ``H[E_t p_t] - E_t H[p_t]`` (BALD): the epistemic part only, high where
  the sampled networks disagree.
"""

# %%
# Train on digits 0-4 only
# ------------------------
import os
import sys

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.metrics import format_table, ood_auroc
from mcdrop.plot import OODHistogramDisplay, OODRocDisplay

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
torch.manual_seed(0)

digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
known = y < 5
x_in, y_in = x[known], y[known]
x_out = x[~known]  # digits 5-9: out of distribution
x_train, x_test, y_train, y_test = train_test_split(
    x_in, y_in, test_size=0.4, stratify=y_in, random_state=0
)

model = nn.Sequential(
    nn.Linear(64, 256),
    nn.ReLU(),
    nn.Dropout(0.5),
    nn.Linear(256, 256),
    nn.ReLU(),
    nn.Dropout(0.5),
    nn.Linear(256, 5),
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
# Monte Carlo dropout on both test sets
# -------------------------------------
n_samples = 30 if QUICK else 200
result_in = mcdrop.predict_with_uncertainty(
    model, x_test, targets=y_test, n_samples=n_samples, seed=0
)
result_out = mcdrop.predict_with_uncertainty(model, x_out, n_samples=n_samples, seed=1)
print(f"{len(x_test)} in-distribution and {len(x_out)} out-of-distribution test images")
print(f"accuracy on digits 0-4: {(result_in.predicted_class == y_test).float().mean():.3f}")

with torch.inference_mode():
    max_prob_in = torch.softmax(model(x_test), 1).amax(1)
    max_prob_out = torch.softmax(model(x_out), 1).amax(1)

scores = {
    "1 - max softmax (deterministic)": (1 - max_prob_in, 1 - max_prob_out),
    "predictive entropy (MC dropout)": (
        result_in.predictive_entropy,
        result_out.predictive_entropy,
    ),
    "mutual information (MC dropout)": (
        result_in.mutual_information,
        result_out.mutual_information,
    ),
}
print(format_table({name: {"ood_auroc": ood_auroc(*pair)} for name, pair in scores.items()}))

# %%
# The AUROCs printed above come from one training run and one seed: rerun with other seeds
# before reading much into small differences between the scores.
#
# Score distributions
# -------------------
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
OODHistogramDisplay.from_result(
    result_in, result_out, score="predictive_entropy", bins=30, ax=axes[0]
)
OODHistogramDisplay.from_result(
    result_in, result_out, score="mutual_information", bins=30, ax=axes[1]
)
axes[0].set_title("Predictive entropy")
axes[1].set_title("Mutual information")

# %%
# ROC curves
# ----------
fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
for name, (s_in, s_out) in scores.items():
    OODRocDisplay.from_scores(s_in, s_out, name=name.split(" (")[0], ax=ax)


# %%
# Run as a script (``python examples/plot_ood_detection.py``), the example also saves its figures as
# ``plot_ood_detection_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_ood_detection_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_ood_detection_N.png")
