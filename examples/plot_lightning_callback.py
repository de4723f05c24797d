"""
MC dropout in a PyTorch Lightning Trainer
=========================================

:class:`mcdrop.integrations.lightning.MCDropoutCallback` adds Monte Carlo dropout to Lightning's
``validate``, ``test`` and ``predict`` loops without touching the LightningModule: during
``fit`` every validation epoch logs the MC dropout NLL, Brier score, ECE and the
misclassification AUROC of the mutual information through the Trainer's logger, and
``trainer.predict`` returns mcdrop results. Install with ``pip install "mcdrop[lightning]"``.
The numbers printed are those of this run.
"""

# %%
# An ordinary LightningModule
# ---------------------------
import logging
import os
import sys
import tempfile
import warnings

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from mcdrop.integrations.lightning import MCDropoutCallback, merge_results
from mcdrop.metrics import evaluate

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
seed_everything(0, verbose=False)


class DigitsClassifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10)
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
x_train, x_val, y_train, y_val = train_test_split(x, y, train_size=1000, random_state=0)
train = DataLoader(TensorDataset(x_train, y_train), batch_size=50, shuffle=True)
val = DataLoader(TensorDataset(x_val, y_val), batch_size=200)

# %%
# Fit with the callback
# ---------------------
callback = MCDropoutCallback(
    n_samples=20 if QUICK else 50,
    metrics=("nll", "brier", "ece", "misclassification_auroc"),
)
log_dir = tempfile.mkdtemp()
trainer = Trainer(
    max_epochs=4 if QUICK else 10,
    accelerator="cpu",
    callbacks=[callback],
    logger=CSVLogger(log_dir),
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,
    log_every_n_steps=5,
)
module = DigitsClassifier()
trainer.fit(module, train, val)
for name, value in callback.results_.items():
    print(f"{name:<30} {value:.4f}  (last epoch)")

# %%
# The logged metrics, epoch by epoch (read back from the CSV logger)
import csv

with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as handle:
    rows = [row for row in csv.DictReader(handle) if row.get("val_mc_nll")]
epochs = [int(row["epoch"]) for row in rows]
fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
for key in ("val_loss", "val_mc_nll"):
    ax.plot(epochs, [float(row[key]) for row in rows], marker="o", label=key)
ax.set(xlabel="epoch", ylabel="NLL (nats)", title="Deterministic vs MC dropout validation NLL")
ax.legend()

# %%
# ``trainer.predict`` returns mcdrop results
# ------------------------------------------
batches = trainer.predict(module, val)
result = merge_results(batches)
print(type(batches[0]).__name__, "per batch; merged:", tuple(result.mean.shape))
print({k: round(v, 4) for k, v in evaluate(result).items() if k in ("accuracy", "nll", "ece")})

wrong = result.predicted_class != result.targets
fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
mi = result.mutual_information
ax.hist([mi[~wrong].numpy(), mi[wrong].numpy()], bins=30, density=True,
        label=["correct", "misclassified"])  # fmt: skip
ax.set(xlabel="mutual information (nats)", ylabel="density",
       title="Epistemic uncertainty of the predictions")  # fmt: skip
ax.legend()


# %%
# Run as a script (``python examples/plot_lightning_callback.py``), the example also saves its figures as
# ``plot_lightning_callback_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_lightning_callback_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_lightning_callback_N.png")
