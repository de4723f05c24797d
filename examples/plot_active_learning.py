"""
Active learning: BALD vs random acquisition
===========================================

Active learning labels the examples the model would learn most from. BALD (Houlsby et al.,
2011; Gal, Islam & Ghahramani, 2017) picks the pool examples with the highest mutual
information between the prediction and the model parameters, estimated with Monte Carlo
dropout as ``result.mutual_information``. The baseline labels random pool examples.

Starting from 20 labelled digits, each round retrains a small network from scratch on the
labelled set, then labels 10 more pool images. The learning curve shows the test accuracy
against the number of labels.
"""

# %%
# Setup
# -----
import os
import sys

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

import mcdrop

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
ROUNDS = 4 if QUICK else 15
ACQUIRE = 10  # labels per round
N_SAMPLES = 10 if QUICK else 30  # MC dropout passes over the pool

digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
x_pool_all, x_test, y_pool_all, y_test = train_test_split(
    x, y, test_size=0.3, stratify=y, random_state=0
)


def train(x_lab: torch.Tensor, y_lab: torch.Tensor, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(150 if QUICK else 300):  # full batch: the labelled set is small
        loss = F.cross_entropy(model(x_lab), y_lab)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def accuracy(model: nn.Module) -> float:
    with torch.inference_mode():
        return float((model(x_test).argmax(1) == y_test).float().mean())


# %%
# The acquisition loop
# --------------------
# Both strategies start from the same 20 labelled images (two per class).
start = torch.cat([torch.nonzero(y_pool_all == c).flatten()[:2] for c in range(10)])


def run(strategy: str, seed: int = 0) -> tuple[list[int], list[float]]:
    generator = torch.Generator().manual_seed(seed)
    labelled = start.clone()
    n_labels, accuracies = [], []
    for round_ in range(ROUNDS + 1):
        model = train(x_pool_all[labelled], y_pool_all[labelled], seed=round_)
        n_labels.append(len(labelled))
        accuracies.append(accuracy(model))
        if round_ == ROUNDS:
            break
        mask = torch.ones(len(x_pool_all), dtype=torch.bool)
        mask[labelled] = False
        pool = torch.nonzero(mask).flatten()
        if strategy == "BALD":
            result = mcdrop.predict_with_uncertainty(
                model, x_pool_all[pool], n_samples=N_SAMPLES, seed=round_
            )
            chosen = pool[torch.topk(result.mutual_information, ACQUIRE).indices]
        else:
            chosen = pool[torch.randperm(len(pool), generator=generator)[:ACQUIRE]]
        labelled = torch.cat([labelled, chosen])
    return n_labels, accuracies


curves = {name: run(name) for name in ("BALD", "random")}
for name, (n_labels, accuracies) in curves.items():
    print(
        f"{name:>6}: "
        + "  ".join(f"{n}:{a:.3f}" for n, a in zip(n_labels, accuracies, strict=True))
    )

# %%
# Learning curves
# ---------------
# One run per strategy; active learning curves are noisy, so average several seeds (the
# ``seed`` argument of ``run``) before concluding which strategy is better for your data.
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
for name, (n_labels, accuracies) in curves.items():
    ax.plot(n_labels, accuracies, marker="o", label=name)
ax.set(xlabel="number of labelled images", ylabel="test accuracy", title="Digits")
ax.legend()


# %%
# Run as a script (``python examples/plot_active_learning.py``), the example also saves its figures as
# ``plot_active_learning_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_active_learning_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_active_learning_N.png")
