"""Seeds, and the lock under which sampling calls run.

Masks come from mcdrop's own generators (:class:`mcdrop.dropout.MaskedDropout`), seeded from a
call's seed or, without one, from the operating system (:func:`fresh_seed`): PyTorch's global
generators are never seeded, read or advanced. Only dropout that cannot take a generator
(``compile=``, TorchScript) draws from them; :func:`sampling_rng` then seeds them for the call
and restores them after. mcdrop runs its sampling and its probes one call at a time per process
(``SAMPLING_LOCK``); plain model calls in other threads are never blocked, and they never see
the twin's dropout.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator

import torch

from mcdrop._validation import check_int
from mcdrop.dropout import SAMPLING_LOCK

__all__: list[str] = []

_MAX_SEED = 2**63 - 1


def check_seed(name: str, seed: object) -> int | None:
    """``seed=``: None or an integer in ``[0, 2**63 - 1]``."""
    if seed is None:
        return None
    value = check_int(name, seed, minimum=0)
    if value > _MAX_SEED:
        raise ValueError(f"Expected `{name}` to be an integer in [0, 2**63 - 1], but got {value}.")
    return value


def check_generator(name: str, generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected `{name}` to be a torch.Generator, but got {generator!r}.")
    return generator


def seed_from(seed: object, generator: object) -> int | None:
    """The seed of a call, from ``seed=`` or one draw of ``generator=`` (at most one of them)."""
    if seed is not None and generator is not None:
        raise ValueError("Expected at most one of `seed` and `generator`, but got both.")
    gen = check_generator("generator", generator)
    if gen is not None:
        return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
    return check_seed("seed", seed)


def fresh_seed() -> int:
    """A seed from the operating system's entropy (``secrets``), not from PyTorch's generators:
    shared masks without ``seed=`` leave the caller's stream as it was."""
    return secrets.randbits(63)


def rng_state(device: torch.device) -> Callable[[], None]:
    """A function that puts the CPU generator and ``device``'s back in their present state."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)

    return restore


@contextlib.contextmanager
def sampling_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Hold the sampling lock; with a seed, seed the generators in play and restore them after."""
    with SAMPLING_LOCK:
        if seed is None:
            yield
            return
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            # Seed only the generators in play: torch.manual_seed also queues lazy seeding of
            # every accelerator backend, which formats a stack trace each time (~0.5 ms a call).
            torch.default_generator.manual_seed(seed)
            if devices:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            yield
