"""Prose the pages share, with its numbers read from the shipped reports (``nip_core.evaluation.results``)."""
from __future__ import annotations


def label_free_note() -> str:
    """Why label-free NIP is hard, with the numbers of the shipped MNIST report (``nip_core.evaluation.results``)."""
    from nip_core.evaluation.results import headline

    h = headline("paper-mnist", "nip")
    return (
        "**Label-free NIP is hard.** A deployable defense does not know the true class, so `nip` guesses it: "
        "on MNIST it flags inputs whose `conv1` neurons leave the range they take on benign digits, and runs NIP "
        "toward the class of the nearest benign digits, compared at `conv1` on the binarised input; when few "
        "neurons moved (a minimal attack such as DeepFool), toward the class the model predicts under small random "
        f"noise ({h.split} split, {h.n_images} digits: mean adversarial accuracy {h.fmt('mean_adv_accuracy')}, "
        f"benign {h.fmt('benign_accuracy')}). That guess is its weak point: an attacker who also targets the vote "
        f"brings it down to {h.fmt('aware_accuracy')}, and the binarised vote holds only because MNIST pixels are "
        "nearly binary. "
        "`nip` needs a **calibration** (labelled benign images in the model's classes): the MNIST and "
        "Fashion-MNIST models ship one; on ImageNet, CIFAR-10 and your own models it passes inputs through "
        "unchanged until you calibrate it (`python -m nip_core calibrate --model M --data PATH`), so it never "
        "harms a benign input. `nip-topk` (top-K candidate classes) and `nip-global` (one all-class profile) "
        "stay selectable by name. "
        "`nip-oracle` uses the TRUE label to pick the profile: it shows what NIP could do with perfect "
        "knowledge, and is **not deployable**. Expect the label-free modes to fall well short of the oracle; "
        "compare against the `random-sign` control (same budget, random direction)."
    )


def aware_note() -> str:
    """How often ``nip`` wins against the attack that knows it, from the shipped MNIST report."""
    from nip_core.evaluation.results import headline

    h = headline("paper-mnist", "nip")
    return f"on the MNIST {h.split} split `nip` still wins {h.pct('aware_accuracy')} of the time against it"
