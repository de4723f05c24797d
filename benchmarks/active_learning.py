"""Active learning on scikit-learn's digits: labels needed to reach a test accuracy, per method.

Protocol (after Kirsch et al. 2019, scaled to a CPU):

* data: scikit-learn's 8x8 digits (1,797 images, 10 classes), pixels scaled to ``[0, 1]``; per
  seed a stratified test split of 500 images, the rest is the pool. ``"repeated"``: every pool
  image three times, each copy with its own Gaussian noise (std 0.1), as the paper's Repeated
  MNIST;
* start: 20 labels, 2 per class; each step acquires ``--acquire`` (10) examples and retrains the
  network from scratch;
* network: ``64 -> 128 -> ReLU -> Dropout(0.5) -> 128 -> ReLU -> Dropout(0.5) -> 10``; Adam
  (lr 1e-3, weight decay 1e-4), ``--steps`` (200) full-batch steps on the labelled set;
* acquisition from ``T = --samples`` Monte Carlo dropout networks with masks **shared** by every
  pool and target example (one network per sample, what BatchBALD and EPIG need; single-point
  scores are the same in distribution with independent masks). The test accuracy is that of the
  MC predictive mean;
* methods: ``random``; ``bald`` (top-k); ``batchbald`` (:func:`mcdrop.active.batchbald`,
  ``--configurations``); ``power-bald`` (:func:`mcdrop.active.stochastic_batch`, beta 1);
  ``epig`` (top-k of :func:`mcdrop.active.epig`, 200 target inputs drawn from the pool at each
  step); on request (``--methods``) ``baal-batchbald``, baal 2.1's ``BatchBALD`` heuristic (500
  draws) on the same probabilities (``pip install baal``): it holds an ``(N, 500 T, C)`` float64
  array, 7.3 GiB on the repeated pool with ``T = 50``, and was killed for memory there.

Every (dataset, method, seed) run is seeded: the same command gives the same numbers.

Usage::

    python benchmarks/active_learning.py --datasets plain --threads 1 \\
        --json benchmarks/results/active_learning_plain.json
    python benchmarks/active_learning.py --datasets repeated --threads 1 \\
        --json benchmarks/results/active_learning_repeated.json
    python benchmarks/active_learning.py --plot-only benchmarks/results/active_learning_*.json \\
        --figure docs/_static/active_learning_digits.png \\
        --summary docs/_static/active_learning_digits.txt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from mcdrop.active import LabelledSet, bald, batchbald, epig, stochastic_batch

METHODS = ("random", "bald", "batchbald", "power-bald", "epig", "baal-batchbald")
HIDDEN, P = 128, 0.5


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (
            nn.Linear(64, HIDDEN),
            nn.Linear(HIDDEN, HIDDEN),
            nn.Linear(HIDDEN, 10),
        )
        self.drop = nn.Dropout(P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.fc1(x)))
        return self.fc3(self.drop(torch.relu(self.fc2(h))))

    @torch.no_grad()
    def shared_samples(self, x: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor]):
        """Probabilities (T, N, 10) of T networks: sample t drops the same units everywhere."""
        first, second = masks
        h = torch.relu(self.fc1(x))[None] * first[:, None, :]
        h = torch.relu(self.fc2(h)) * second[:, None, :]
        return torch.softmax(self.fc3(h).double(), -1)


def draw_masks(t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(  # type: ignore[return-value]
        (torch.rand(t, HIDDEN, generator=gen) >= P).float() / (1 - P) for _ in range(2)
    )


def data(kind: str, seed: int) -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    x_pool, x_test, y_pool, y_test = train_test_split(
        x, y, test_size=500, stratify=y, random_state=seed
    )
    if kind == "repeated":
        rng = np.random.default_rng(seed)
        x_pool = np.repeat(x_pool, 3, axis=0)
        x_pool = (x_pool + rng.normal(0, 0.1, size=x_pool.shape)).astype(np.float32)
        y_pool = np.repeat(y_pool, 3)
    return tuple(torch.from_numpy(a) for a in (x_pool, y_pool, x_test, y_test))


def train(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> Net:
    torch.manual_seed(seed)
    net = Net()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net.eval()


def choose(method: str, probs: torch.Tensor, target: torch.Tensor, n: int, args, seed: int):
    if method == "random":
        return torch.randperm(probs.shape[1], generator=torch.Generator().manual_seed(seed))[:n]
    if method == "bald":
        return torch.sort(bald(probs), descending=True, stable=True).indices[:n]
    if method == "batchbald":
        return batchbald(probs, n, n_configurations=args.configurations, seed=seed).indices
    if method == "power-bald":
        return stochastic_batch(bald(probs), n, mode="power", seed=seed).indices
    if method == "epig":
        return torch.sort(epig(probs, target), descending=True, stable=True).indices[:n]
    from baal.active.heuristics import BatchBALD

    np.random.seed(seed)  # noqa: NPY002 (baal draws from the global generators)
    torch.manual_seed(seed)
    ranks = BatchBALD(num_samples=n, num_draw=500)(probs.permute(1, 2, 0).numpy())
    return torch.as_tensor(np.asarray(ranks)[:n])


def run(kind: str, method: str, seed: int, args) -> dict:
    x_pool, y_pool, x_test, y_test = data(kind, seed)
    state = LabelledSet.initial(len(y_pool), args.initial, labels=y_pool, seed=seed)
    labels, accuracies, seconds = [], [], []
    step = 0
    while True:
        index = list(state.labelled)
        net = train(x_pool[index], y_pool[index], args.steps, seed=seed * 1000 + step)
        masks = draw_masks(args.samples, seed * 1000 + step)
        mean = net.shared_samples(x_test, masks).mean(0)
        labels.append(len(index))
        accuracies.append(float((mean.argmax(1) == y_test).double().mean()))
        if len(index) + args.acquire > args.max_labels:
            break
        pool = torch.from_numpy(state.unlabelled)
        probs = net.shared_samples(x_pool[pool], masks)
        gen = torch.Generator().manual_seed(seed * 1000 + step)
        target_rows = pool[torch.randperm(len(pool), generator=gen)[: args.targets]]
        target = net.shared_samples(x_pool[target_rows], masks) if method == "epig" else None
        start = time.perf_counter()
        chosen = choose(method, probs, target, args.acquire, args, seed * 1000 + step)
        seconds.append(time.perf_counter() - start)
        assert len(set(chosen.tolist())) == args.acquire
        state = state.label(chosen)
        step += 1
    return {"labels": labels, "accuracy": accuracies, "acquire_seconds": seconds}


def labels_to_reach(curve: dict, level: float) -> int | None:
    for n, accuracy in zip(curve["labels"], curve["accuracy"], strict=True):
        if accuracy >= level:
            return n
    return None


def summary(results: dict, level: float) -> str:
    lines = [f"labels to reach {level:.0%} test accuracy: median [q25, q75] over seeds"]
    for kind, by_method in results.items():
        lines.append(f"\n{kind}")
        for method, runs in by_method.items():
            reached = [labels_to_reach(r, level) for r in runs]
            values = np.array([np.inf if r is None else r for r in reached], dtype=float)
            q25, q50, q75 = (
                f"{v:.0f}" if np.isfinite(v) else f">{runs[0]['labels'][-1]}"
                for v in np.percentile(values, [25, 50, 75], method="inverted_cdf")
            )
            missing = sum(r is None for r in reached)
            seconds = np.median([s for r in runs for s in r["acquire_seconds"]])
            lines.append(
                f"  {method:15s} {q50:>6s} [{q25}, {q75}]"
                + (f"  ({missing} of {len(runs)} seeds never reached it)" if missing else "")
                + f"  median acquisition {seconds:.2f} s"
            )
    return "\n".join(lines)


def plot(results: dict, path: Path, level: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (kind, by_method) in zip(axes[0], results.items(), strict=True):
        for method, runs in by_method.items():
            labels = runs[0]["labels"]
            curves = np.array([r["accuracy"] for r in runs])
            q25, q50, q75 = np.percentile(curves, [25, 50, 75], axis=0)
            (line,) = ax.plot(labels, q50, label=method)
            ax.fill_between(labels, q25, q75, color=line.get_color(), alpha=0.2)
        ax.axhline(level, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{kind} digits ({len(by_method[next(iter(by_method))])} seeds)")
        ax.set_xlabel("labelled examples")
        ax.set_ylabel("test accuracy (median, IQR band)")
        ax.set_ylim(0.5, 1.0)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["plain", "repeated"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[m for m in METHODS if m != "baal-batchbald"],
        choices=METHODS,
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-list", type=int, nargs="+", help="run these seeds instead")
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--acquire", type=int, default=10)
    parser.add_argument("--max-labels", type=int, default=160)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--configurations", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--level", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--summary", type=Path, help="write the table of labels to this file")
    parser.add_argument(
        "--plot-only", type=Path, nargs="+", help="read (and merge) results from JSON files"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.plot_only:
        merged: dict = {}
        for path in args.plot_only:
            for kind, by_method in json.loads(path.read_text())["results"].items():
                for method, runs in by_method.items():  # runs of one method may be split
                    merged.setdefault(kind, {}).setdefault(method, []).extend(runs)
        results = {
            kind: {m: merged[kind][m] for m in METHODS if m in merged[kind]}
            for kind in ("plain", "repeated")
            if kind in merged
        }
    else:
        results = {}
        for kind in args.datasets:
            results[kind] = {}
            for method in args.methods:
                runs = []
                for seed in args.seed_list or range(args.seeds):
                    start = time.perf_counter()
                    runs.append(run(kind, method, seed, args))
                    print(
                        f"{kind} {method} seed {seed}: {time.perf_counter() - start:.0f} s, "
                        f"accuracy {runs[-1]['accuracy'][0]:.3f} -> {runs[-1]['accuracy'][-1]:.3f}",
                        flush=True,
                    )
                    results[kind][method] = runs
                    if args.json:  # after every seed: a cut-off run keeps what it did
                        config = {k: v for k, v in vars(args).items() if not isinstance(v, Path)}
                        args.json.write_text(json.dumps({"config": config, "results": results}))
    text = summary(results, args.level)
    print(text)
    if args.summary:
        args.summary.write_text(text + "\n")
    if args.figure:
        plot(results, args.figure, args.level)


if __name__ == "__main__":
    main()
