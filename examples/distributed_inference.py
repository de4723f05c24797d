"""Sharded Monte Carlo dropout inference with torch.distributed.

Launch one process per GPU (or a few CPU processes)::

    torchrun --nproc_per_node=2 examples/distributed_inference.py

Each rank samples its share of the test set; every rank receives the full result in the
original order. NCCL is used when every local rank has its own GPU, gloo otherwise.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

import mcdrop
from mcdrop.metrics import evaluate


def setup() -> tuple[int, int, torch.device]:
    """Initialise the process group from the torchrun environment; returns rank, world, device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        torch.cuda.set_device(local_rank)  # NCCL collectives use the current device
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 150) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()


def main() -> None:
    rank, world, device = setup()
    try:
        digits = load_digits()
        x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
        y = torch.tensor(digits.target)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=0)

        torch.manual_seed(0)
        model = make_model().to(device)
        if rank == 0:  # train once (or load a checkpoint) ...
            train(model, x_train.to(device), y_train.to(device))
        for tensor in model.state_dict().values():  # ... and share the weights
            dist.broadcast(tensor, src=0)
        model.eval()

        # A map-style Dataset of (inputs, targets) pairs; a tensor or a DataLoader works too.
        result = mcdrop.predict_with_uncertainty(
            model,
            TensorDataset(x_test, y_test),
            n_samples=100,
            batch_size=128,
            seed=0,
            distributed=True,
        )
        assert isinstance(result, mcdrop.ClassificationResult)
        if rank == 0:
            metrics = evaluate(result)
            wrong = torch.as_tensor(result.predicted_class != result.targets)
            mi = result.mutual_information
            print(f"world size {world} ({dist.get_backend()}), {len(y_test)} test digits")
            print(
                f"accuracy {metrics['accuracy']:.3f}  nll {metrics['nll']:.3f}  "
                f"ece {metrics['ece']:.3f}"
            )
            print(
                f"mutual information: right {mi[~wrong].mean():.4f}  "
                f"wrong {mi[wrong].mean() if wrong.any() else float('nan'):.4f}"
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
