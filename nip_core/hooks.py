"""Forward hooks that always come off, and the per-neuron reduction: the two small things every analysis needs.

A model is cached and shared by every session of the app, so a hook must (1) act only in the thread
that registered it, and (2) be removed whatever happens in the pass: :func:`hooked` registers and
always removes; :func:`capture_hook` and :func:`leaf_hook` act in their owner's thread only. A neuron
of a convolutional layer is a channel: :func:`neuron_means` (and :func:`neuron_sums`) reduce its
positions to one value.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

Hook = Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]


class StopForward(Exception):
    """Raised by a :func:`capture_hook` with ``stop``: the pass ends at the hooked layer."""


@contextmanager
def hooked(module: nn.Module, hook: Hook) -> Iterator[None]:
    """``hook`` on ``module``'s forward for the block; removed on leaving it, also on an exception."""
    with hooked_all([(module, hook)]):
        yield


@contextmanager
def hooked_all(pairs: Iterable[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Each ``(module, hook)`` registered for the block and all removed on leaving it."""
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def capture_hook(box: list[torch.Tensor], stop: bool = True) -> Hook:
    """A forward hook that appends the layer's output to ``box``, in the calling thread only
    (other sessions' passes through the shared model are left alone), and with ``stop`` ends the
    forward pass there (the caller catches :class:`StopForward`)."""
    owner = threading.get_ident()

    def hook(_m, _inp, out):
        if threading.get_ident() == owner:
            box.append(out)
            if stop:
                raise StopForward
    return hook


def leaf_hook(box: list[torch.Tensor]) -> Hook:
    """A forward hook that restarts the graph at the layer: its output becomes a fresh leaf
    (appended to ``box``). Only the registering thread's forwards are captured."""
    owner = threading.get_ident()

    def hook(_m, _inp, out):
        if threading.get_ident() != owner:
            return None
        leaf = out.detach().requires_grad_(True)
        box.append(leaf)
        return leaf.clone()  # downstream in-place ops must not touch the leaf
    return hook


def neuron_means(out: torch.Tensor) -> torch.Tensor:
    """Per-neuron values ``[N, n_neurons]``: a conv output ``[N, C, h, w]`` → its channel means over
    positions; a dense output ``[N, F]`` unchanged."""
    return out.flatten(2).mean(2) if out.dim() > 2 else out


def neuron_sums(out: torch.Tensor) -> torch.Tensor:
    """As :func:`neuron_means`, summed over positions (attributions add up over a channel's positions)."""
    return out.flatten(2).sum(2) if out.dim() > 2 else out
