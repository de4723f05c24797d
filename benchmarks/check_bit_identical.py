"""Same seed, same numbers: compare two checkouts of mcdrop bit for bit (not a test).

Runs a zoo of small models (the kinds the test suite samples: a BatchNorm MLP with a dropout head,
dropout after every layer, a heavy body with a dropout head, PyTorch's transformer encoder, fused
attention, functional dropout, stacked LSTM/GRU, a conv net, a model whose examples interact, a
DropConnect layer, a heteroscedastic regressor, a tiny BERT when ``transformers`` is installed)
with fixed seeds under every strategy, through :func:`mcdrop.predict_with_uncertainty` (several
batches, ``keep_samples``, adaptive ``n_samples``, bf16 autocast) and :class:`mcdrop.MCDropout`,
and saves every array of every result (or the error it raised) to an ``.npz`` file. Only the
public API is used, so any two checkouts compare::

    PYTHONPATH=/path/to/old python benchmarks/check_bit_identical.py --save /tmp/old.npz
    PYTHONPATH=. python benchmarks/check_bit_identical.py --compare /tmp/old.npz

``--compare`` exits 1 when any array differs in a single bit (or a case raised in one checkout
and not in the other), listing the cases; 0 when all are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import mcdrop

STRATEGIES = ("auto", "loop", "replicate", "vmap")


# -- the zoo ----------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


class DeepDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 32), nn.ReLU(),
            nn.Dropout(0.2), nn.Linear(32, 4),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HeadDropout(nn.Module):
    """A heavy body before the only dropout: auto picks vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.2, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.attn_drop = nn.Dropout(0.4)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.head(self.proj(out.transpose(1, 2).reshape(b, n, d)).mean(1))


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.5, self.training))


class Recurrent(nn.Module):
    def __init__(self, cls: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cls(6, 16, num_layers=2, dropout=0.4, batch_first=True)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.drop(out[:, -1]))


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


class SetModel(nn.Module):
    """Centres over the batch: its examples interact, so it is never replicated."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.head(self.drop(h - h.mean(0, keepdim=True)))


class SetAfterDropout(nn.Module):
    """Dropout first, then a heavy layer and a batch mean: auto tries replicate, which the
    examples-interact check refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(6, 128)
        self.head = nn.Linear(128, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(self.drop(x)))
        return self.head(h - h.mean(0, keepdim=True))


class DropConnect(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.dropout(self.head.weight, 0.3, self.training)
        return F.linear(torch.relu(self.fc(x)), weight, self.head.bias)


class Heteroscedastic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.2))
        self.mean = nn.Linear(32, 2)
        self.log_var = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.log_var(h)


class InplaceDropout(nn.Module):
    """In-place dropout on an activation vmap leaves unbatched: auto's vmap fails, falls back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 256)
        self.fc2 = nn.Linear(256, 256)
        self.drop = nn.Dropout(0.3, inplace=True)
        self.head = nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.fc2(torch.relu(self.fc1(x))))))


class HostCheck(nn.Module):
    """Prefix-heavy, but a host-side check after the dropout fails under vmap after the masks."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 256), nn.ReLU(), nn.Linear(256, 256))
        self.drop, self.head = nn.Dropout(0.3), nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.body(x)))
        if not bool(torch.isfinite(h).all()):
            raise ValueError("non-finite activations")
        return self.head(h)


class GatedDot(nn.Module):
    """The dropout child runs only while the parent trains: found on the first chunk."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.25, 1.5, -0.5]))
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.twice:
            h = self.drop(x)
            h = self.drop(h) if self.training else h
        else:
            h = self.drop(x) if self.training else x
        return h @ self.w.unsqueeze(1)


def _scaled(model: nn.Module, factor: float = 3.0) -> nn.Module:
    """Larger weights, so that the outputs vary enough to tell strategies apart."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor if p.ndim > 1 else 1.0)
    return model.eval()


def _bert() -> tuple[nn.Module, dict[str, torch.Tensor]] | None:
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError:
        return None
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=3,
        hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2, attn_implementation="eager",
    )  # fmt: skip
    model = _scaled(BertForSequenceClassification(config), 2.0)
    ids = torch.randint(0, 64, (6, 10))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def zoo() -> Iterator[tuple[str, nn.Module, Any, dict[str, Any]]]:
    """``(name, model, inputs, options)``, weights and inputs from fixed seeds."""
    torch.manual_seed(0)
    yield "mlp", _scaled(MLP()), torch.randn(10, 6), {}
    yield "deep", _scaled(DeepDropout()), torch.randn(10, 6), {}
    yield "head", _scaled(HeadDropout()), torch.randn(10, 6), {}
    yield "encoder", _scaled(Encoder(), 2.0), torch.randn(6, 5, 16), {}
    yield "fused", _scaled(FusedAttention(), 2.0), torch.randn(6, 5, 16), {}
    yield "functional", _scaled(Functional()), torch.randn(10, 6), {}
    yield "lstm", _scaled(Recurrent(nn.LSTM), 2.0), torch.randn(6, 7, 6), {}
    yield "gru", _scaled(Recurrent(nn.GRU), 2.0), torch.randn(6, 7, 6), {}
    yield "conv", _scaled(Conv(), 2.0), torch.randn(6, 3, 12, 12), {}
    yield "set", _scaled(SetModel()), torch.randn(10, 6), {}
    yield "set2", _scaled(SetAfterDropout()), torch.randn(10, 6), {}
    yield "dropconnect", _scaled(DropConnect()), torch.randn(10, 6), {}
    yield (
        "hetero",
        _scaled(Heteroscedastic()),
        torch.randn(10, 6),
        {
            "task": "regression",
            "heteroscedastic": True,
        },
    )
    yield "inplace", _scaled(InplaceDropout(), 2.0), torch.randn(10, 6), {}
    yield "hostcheck", _scaled(HostCheck(), 2.0), torch.randn(10, 6), {}
    regression = {"task": "regression"}
    yield "gated", GatedDot().eval(), torch.randn(10, 6), regression
    yield "twice", GatedDot(twice=True).eval(), torch.randn(10, 6), regression
    bert = _bert()
    if bert is not None:
        yield "bert", bert[0], bert[1], {}


# -- the cases ----------------------------------------------------------------------------------
def _arrays(prefix: str, result: Any) -> dict[str, np.ndarray]:
    out = {}
    for key, value in result.to_dict().items():
        if isinstance(value, torch.Tensor):
            out[f"{prefix}/{key}"] = value.detach().cpu().numpy()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = np.asarray(value)
    return out


def _error(prefix: str, error: Exception) -> dict[str, np.ndarray]:
    text = f"{type(error).__name__}: {error}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {f"{prefix}/ERROR {type(error).__name__} {digest}": np.asarray(0)}


def _case(prefix: str, run: Callable[[], Any]) -> dict[str, np.ndarray]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = run()
    except Exception as error:  # the same error in both checkouts is the same behaviour
        return _error(prefix, error)
    if isinstance(value, torch.Tensor):
        return {f"{prefix}/stacked": value.detach().cpu().numpy()}
    if isinstance(value, dict):
        return {f"{prefix}/{key}": np.asarray(v) for key, v in value.items()}
    return _arrays(prefix, value)


def cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    predict = mcdrop.predict_with_uncertainty
    for name, model, x, options in zoo():
        base = {"n_samples": 24, "seed": 7, "progress": False, **options}
        for strategy in STRATEGIES:
            opts = {**base, "strategy": strategy}
            yield f"{name}/{strategy}/call", lambda m=model, x=x, o=opts: predict(m, x, **o)
            batched = {**opts, "batch_size": 4, "keep_samples": True}
            yield f"{name}/{strategy}/batches", lambda m=model, x=x, o=batched: predict(m, x, **o)
            small = {**opts, "batch_budget": 16}
            yield f"{name}/{strategy}/budget16", lambda m=model, x=x, o=small: predict(m, x, **o)
            held = {k: v for k, v in opts.items() if k != "progress"}

            def forward(m: nn.Module = model, x: Any = x, o: dict[str, Any] = held) -> Any:
                mc = mcdrop.MCDropout(m, **o)
                out: dict[str, Any] = {}
                for call in ("first", "second"):  # the second with what the wrapper kept
                    stacked = mc(**x) if isinstance(x, dict) else mc(x)
                    for i, part in enumerate(stacked if isinstance(stacked, tuple) else [stacked]):
                        out[f"{call}{i}"] = part.detach().cpu().numpy()
                    out[f"{call}_strategy"] = str(mc.last_strategy)
                    out[f"{call}_samples_per_pass"] = mc.last_samples_per_pass
                return out

            yield f"{name}/{strategy}/mcdropout", forward
        adaptive = {**base, "n_samples": "auto", "tolerance": 0.05, "max_samples": 200}
        yield f"{name}/auto/adaptive", lambda m=model, x=x, o=adaptive: predict(m, x, **o)
        amp = {**base, "amp": "bf16"}
        yield f"{name}/auto/bf16", lambda m=model, x=x, o=amp: predict(m, x, **o)
        unseeded = {**base, "seed": None}

        def global_stream(m: nn.Module = model, x: Any = x, o: dict[str, Any] = unseeded) -> Any:
            torch.manual_seed(3)  # without a seed: the global stream, as the caller left it
            return predict(m, x, **o)

        yield f"{name}/auto/global", global_stream


def collect() -> dict[str, np.ndarray]:
    torch.set_num_threads(2)
    arrays: dict[str, np.ndarray] = {}
    for prefix, run in cases():
        arrays.update(_case(prefix, run))
    return arrays


def compare(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> list[str]:
    problems = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            problems.append(f"only in the saved file: {key}")
        elif key not in old:
            problems.append(f"only in this checkout: {key}")
        else:
            a, b = old[key], new[key]
            if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
                problems.append(f"differs: {key} {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write this checkout's arrays to an .npz file")
    group.add_argument("--compare", help="compare this checkout's arrays with an .npz file")
    args = parser.parse_args(argv)
    print(f"mcdrop from {mcdrop.__file__}", file=sys.stderr)
    arrays = collect()
    errors = sum(1 for key in arrays if "/ERROR " in key)
    print(f"{len(arrays)} arrays ({errors} cases refused)", file=sys.stderr)
    if args.save:
        np.savez(args.save, **arrays)  # type: ignore[arg-type]
        return 0
    with np.load(args.compare) as saved:
        old = {key: saved[key] for key in saved.files}
    problems = compare(old, arrays)
    for line in problems:
        print(line)
    n_cases = len({key.rsplit("/", 1)[0] for key in arrays})
    print(f"{n_cases} cases, {len(arrays)} arrays: {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
