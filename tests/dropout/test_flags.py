"""Watched training flags (``mcdrop.dropout._flags``): what tells a kept plan that training mode
may have changed. Each read of a watched flag is noted on the thread that asked, by the code that
read it; nothing else about the module changes (value, ``vars``, ``isinstance``, ``train()``)."""

from __future__ import annotations

import copy
import gc
import threading
import weakref

import torch
from torch import nn

from mcdrop.dropout import flag_reads, unwatched, watch_flags


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * (2.0 if self.training else 1.0)


def _watched_block() -> Block:
    block = Block().eval()
    assert watch_flags([block, block.lin])
    return block


def test_a_read_is_noted_with_the_code_that_read_it():
    block = _watched_block()
    x = torch.ones(2, 4)
    with flag_reads() as reads:
        out = block(x)
    assert reads == [Block.forward.__code__]
    assert torch.equal(out, block.lin(x))  # the value read is the flag: eval
    block.train()
    with flag_reads() as reads:
        assert torch.equal(block(x), 2 * block.lin(x))
    assert reads == [Block.forward.__code__]
    with flag_reads() as reads:
        block.lin(x)  # nn.Linear never reads its flag
    assert reads == []


def test_the_module_is_otherwise_as_it_was():
    block = _watched_block()
    assert isinstance(block, Block) and type(block) is not Block and unwatched(type(block)) is Block
    assert type(block).__name__ == "Block" and type(block).__qualname__ == Block.__qualname__
    assert vars(block)["training"] is False and block.training is False
    block.train()
    assert vars(block)["training"] is True and block.lin.training is True
    clone = copy.copy(block)
    assert clone.training is True and type(clone) is type(block)
    assert unwatched(nn.Linear) is nn.Linear  # an unwatched class is its own
    other = _watched_block()
    assert type(other) is type(block)  # one watched class per class
    assert type(Block()) is Block  # new modules of the class are not watched


def test_reads_on_another_thread_are_not_noted():
    block = _watched_block()
    done = threading.Event()

    def read_elsewhere():
        for _ in range(1000):
            block.training  # noqa: B018
        done.set()

    with flag_reads() as reads:
        thread = threading.Thread(target=read_elsewhere)
        thread.start()
        thread.join()
    assert done.is_set() and reads == []


def test_nested_blocks_pass_their_reads_out():
    block = _watched_block()
    with flag_reads() as outer:
        with flag_reads() as inner:
            block(torch.ones(1, 4))
        assert inner == [Block.forward.__code__]
    assert outer == [Block.forward.__code__]
    block(torch.ones(1, 4))  # outside any block: nothing noted, nothing fails


class OwnTraining(nn.Module):
    """A class that defines ``training`` itself: left as it is."""

    @property
    def training(self) -> bool:  # type: ignore[override]
        return False

    @training.setter
    def training(self, value: bool) -> None:
        pass


class Meta(type):
    pass


class WithMeta(nn.Module, metaclass=Meta):
    pass


def test_classes_that_cannot_be_watched_are_left_alone():
    for module in (OwnTraining(), WithMeta()):
        before = type(module)
        assert not watch_flags([nn.Linear(2, 2), module])
        assert type(module) is before
    plain = nn.Linear(2, 2)
    assert not watch_flags([plain, WithMeta()]) and type(plain) is nn.Linear  # all or nothing


def test_a_watched_class_does_not_outlive_its_modules():
    """fx makes a class per GraphModule: neither it nor its watched class may be kept."""
    made = type("Made", (Block,), {})
    module = made().eval()
    assert watch_flags([module])
    refs = weakref.ref(made), weakref.ref(type(module))
    del made, module
    gc.collect()
    gc.collect()  # the watched class goes first, then the class it watched
    assert refs[0]() is None and refs[1]() is None
