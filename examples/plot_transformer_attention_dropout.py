"""
Attention dropout in a Transformer encoder
==========================================

The classic Monte Carlo dropout recipe, ``model.eval()`` and then ``train()`` on every
``nn.Dropout`` module, silently does nothing inside PyTorch's Transformer layers:

* ``nn.MultiheadAttention`` passes ``dropout if self.training else 0.0`` to its fused
  attention kernel, so attention dropout only samples when the attention module itself is in
  training mode;
* ``nn.TransformerEncoderLayer`` in eval mode takes a fused "fast path" under
  ``torch.inference_mode()`` that skips all of its dropout modules.

:func:`mcdrop.dropout_sites` lists these gating modules with the reason each one is switched
on, and :func:`mcdrop.predict_with_uncertainty` switches exactly those, leaving everything else
(the LayerNorms included) in eval mode. This example trains a small
:class:`torch.nn.TransformerEncoder` on a synthetic sequence task and checks that the samples
really vary, including when attention dropout is the only dropout left.
"""

# %%
# A sequence task: are there more 1s than 2s?
# -------------------------------------------
import os
import sys

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.metrics import evaluate

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
VOCAB, LENGTH = 8, 16
torch.manual_seed(0)


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (4 * n, LENGTH))
    difference = (tokens == 1).sum(1) - (tokens == 2).sum(1)
    keep = torch.nonzero(difference != 0).flatten()[:n]  # no ties
    return tokens[keep], (difference[keep] > 0).long(), difference[keep]


x_train, y_train, _ = make_data(400)
x_test, y_test, diff_test = make_data(500)


class SequenceClassifier(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2, p: float = 0.3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=64, dropout=p, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


model = SequenceClassifier()
optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
for _epoch in range(5 if QUICK else 12):
    for batch in torch.randperm(len(x_train)).split(64):
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
model.eval()

# %%
# Which modules sample?
# ---------------------
# Besides the ``nn.Dropout`` modules, mcdrop switches on every ``TransformerEncoderLayer``
# (to leave the fast path) and every ``MultiheadAttention`` (for attention dropout).
for site in mcdrop.dropout_sites(model, example_inputs=x_test[:4]):
    print(site)

# %%
# The classic recipe draws identical samples
# ------------------------------------------
# Here are ``T`` passes with only the ``nn.Dropout`` modules in training mode, summarised with
# :func:`mcdrop.summarize_samples`: their mutual information is the spread between samples.
n_samples = 20 if QUICK else 50
for module in model.modules():
    if isinstance(module, nn.Dropout):
        module.train()
with torch.inference_mode():
    naive_samples = torch.stack([model(x_test) for _ in range(n_samples)])
model.eval()
naive = mcdrop.summarize_samples(naive_samples, targets=y_test)

# %%
# mcdrop, with every site, and with attention dropout alone (``exclude`` keeps the
# ``nn.Dropout`` modules, whose names contain "dropout", in eval mode):
full = mcdrop.predict_with_uncertainty(model, x_test, targets=y_test, n_samples=n_samples, seed=0)
attention_only = mcdrop.predict_with_uncertainty(
    model, x_test, targets=y_test, n_samples=n_samples, seed=0, exclude="*dropout*"
)
for name, result in [
    ("classic recipe", naive),
    ("mcdrop, all sites", full),
    ("mcdrop, attention only", attention_only),
]:
    metrics = evaluate(result)
    print(
        f"{name:<24} mean MI = {float(result.mutual_information.mean()):.5f}  "
        f"max MI = {float(result.mutual_information.max()):.5f}  "
        f"accuracy = {metrics['accuracy']:.3f}"
    )

# %%
# Where is the model uncertain?
# -----------------------------
# The difference between the counts of 1s and 2s measures how easy a sequence is: the closer to
# zero, the closer the sequence is to the decision boundary. The box plots show the mutual
# information of the test sequences grouped by that difference.
values = sorted(set(diff_test.abs().clamp(max=6).tolist()))
groups = [full.mutual_information[diff_test.abs().clamp(max=6) == v].numpy() for v in values]
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
ax.boxplot(groups, showfliers=False)
ax.set_xticks(range(1, len(values) + 1), [str(v) if v < 6 else "6+" for v in values])
ax.set(
    xlabel="|count of 1s - count of 2s|",
    ylabel="mutual information (nats)",
    title="MC dropout uncertainty vs difficulty",
)


# %%
# Run as a script (``python examples/plot_transformer_attention_dropout.py``), the example also saves its figures as
# ``plot_transformer_attention_dropout_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_transformer_attention_dropout_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_transformer_attention_dropout_N.png")
