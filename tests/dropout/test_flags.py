"""Watched training flags (``mcdrop.dropout._flags``): what tells a kept plan that training mode
may have changed. Each read of a watched flag is noted, by the code that read it, on whichever
thread reads it while noting is on; nothing else about the module changes (its class, its value,
its parameters); mcdrop assigns it with ``set_flag``."""

from __future__ import annotations

import copy
import threading

import torch
from torch import nn

from mcdrop.dropout import set_flag, watch_flags


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * (2.0 if self.training else 1.0)


def _watched() -> tuple[Block, object]:
    block = Block().eval()
    flags = watch_flags([block, block.lin])
    assert flags is not None
    return block, flags


def test_a_read_is_noted_with_the_code_that_read_it():
    block, flags = _watched()
    x = torch.ones(2, 4)
    with flags.noting() as reads:
        out = block(x)
    assert reads == [Block.forward.__code__]
    assert torch.equal(out, block.lin(x))  # the value read is the flag: eval
    set_flag(block, True)
    with flags.noting() as reads:
        assert torch.equal(block(x), 2 * block.lin(x))
        getattr(block.lin, "training")  # noqa: B009 - a read through getattr, noted here
    assert reads == [
        Block.forward.__code__,
        test_a_read_is_noted_with_the_code_that_read_it.__code__,
    ]
    with flags.noting() as reads:
        block.lin(x)  # nn.Linear never reads its flag
    assert reads == []
    block(x)  # outside noting: nothing noted, nothing fails


def test_the_module_is_otherwise_as_it_was():
    block, _ = _watched()
    plain = Block().eval()
    assert type(block) is Block and type(block.lin) is nn.Linear  # the class is its own
    assert block.training is False and block.lin.training is False
    assert [n for n, _ in block.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert block.state_dict().keys() == plain.state_dict().keys()
    assert block.lin.weight is block.lin._parameters["weight"] and "training" not in list(
        block._parameters
    )
    clone = copy.copy(block)
    assert clone.training is False
    set_flag(block, True)
    assert block.training is True and clone.training is True  # the copy shares the registry
    assert Block.__subclasses__() == []  # no class was made


def test_reads_on_another_thread_are_noted():
    block, flags = _watched()
    with flags.noting() as reads:
        thread = threading.Thread(target=lambda: block.training)
        thread.start()
        thread.join()
    assert len(reads) == 1


def test_a_flag_assigned_goes_back_to_the_instance_until_armed_again():
    """``forward`` may assign flags (``self.backbone.eval()``): the value is then the one
    assigned, in training mode as in the twin; later reads are not noted until ``arm``."""
    block, flags = _watched()
    set_flag(block, True)  # mcdrop's own writes keep the watch
    assert block.training is True and "training" not in vars(block)
    block.eval()
    assert vars(block)["training"] is False and vars(block.lin)["training"] is False
    with flags.noting() as reads:
        block(torch.ones(1, 4))
    assert reads == []
    flags.arm()
    assert "training" not in vars(block) and block.training is False  # as the plan set it
    set_flag(nn.Linear(2, 2), True)  # an unwatched module: its own flag


def test_arm_undoes_what_a_forward_wrote():
    block, flags = _watched()
    block.__dict__["training"] = True  # a forward that wrote its flag directly
    block.__dict__["_parameters"] = dict(block._parameters)  # and replaced the registry
    flags.arm()
    assert block.training is False and "training" not in vars(block)  # as the plan set it
    with flags.noting() as reads:
        block(torch.ones(1, 4))
    assert reads == [Block.forward.__code__]


class OwnTraining(nn.Module):
    """A class that defines ``training`` itself."""

    @property
    def training(self) -> bool:  # type: ignore[override]
        return False

    @training.setter
    def training(self, value: bool) -> None:
        pass


class OwnLookup(nn.Module):
    """A class of its own attribute lookup: it might not ask ``nn.Module`` for the flag."""

    def __getattr__(self, name: str):
        return super().__getattr__(name)


def test_modules_that_cannot_be_watched_are_left_alone():
    for module in (OwnTraining(), OwnLookup()):
        plain = nn.Linear(2, 2)
        assert watch_flags([plain, module]) is None  # all or nothing
        assert "training" in vars(plain) and type(plain._parameters) is dict


class StochasticDepth(nn.Module):
    """A look-alike of torchvision's (same class name, same code): not known, its reads count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if not self.training else x * 2.0


def test_only_the_known_library_code_is_exempt():
    module = StochasticDepth().eval()
    flags = watch_flags([module])
    assert flags is not None
    with flags.noting() as reads:
        module(torch.ones(1))
    assert reads == [StochasticDepth.forward.__code__]
