"""Never harm (README): without a calibration the label-free ``nip`` passes inputs through
unchanged (EfficientNet-Lite0 here; a user's model in test_cli_promises, ResNet-8 in
test_calibration), and with a built-in one (lenet-fashion's, shipped) it detects and acts."""
import torch

from nip_core.attacks import run_attack
from nip_core.calibration import SHIPPED, calibration_for
from nip_core.data import heldout_split
from nip_core.defenses import DEFENSES, apply_defense
from nip_core.label_free import nip_targets, selector_for, uses_neighbours
from nip_core.models import load_model


def test_nip_leaves_every_benign_photo_unchanged_on_efficientnet_without_a_calibration():
    m = load_model("efficientnet-lite0")
    assert calibration_for(m) is None and not uses_neighbours(m)
    x, y = heldout_split(m, "all")          # the correctly classified gallery and foolbox photos
    assert len(y) > 0
    for name in ("nip", "counter-attack"):  # both make nip's class choice, so both need a calibration
        out = apply_defense(m, name, x).x_def
        assert torch.equal(out, x), name
        assert torch.equal(m.predict(out), y), name


def test_nip_runs_with_the_shipped_calibration_on_lenet_fashion():
    m = load_model("lenet-fashion")
    cal = calibration_for(m)
    assert cal is not None and uses_neighbours(m)
    assert (SHIPPED / f"{m.name}-{m.weights_sha256[:16]}.npz").exists() and cal.weights_sha256 == m.weights_sha256
    p = DEFENSES.get_unit("nip").params_for(m, {})
    sel = selector_for(m, p)
    assert sel.calibration is cal and len(sel.banks["conv1"].labels) == len(cal.reference(p["per_class"])[1])

    x, y = heldout_split(m, "report")
    x, y = x[:16], y[:16]
    benign = nip_targets(m, sel, x, p)
    out = apply_defense(m, "nip", x, p).x_def
    # inputs the detectors pass are returned unchanged, so they stay correct
    keep = ~benign["flagged"]
    assert keep.sum() >= 15 and torch.equal(out[keep], x[keep])
    assert torch.equal(m.predict(out[keep]), y[keep])

    adv = run_attack(m, "fgsm", x, y, {"eps": 0.2}, seed=0).x_adv
    attacked = nip_targets(m, sel, adv, p)
    defended = apply_defense(m, "nip", adv, p).x_def
    flagged = attacked["flagged"]
    # On Fashion-MNIST the detectors flag few FGSM inputs (docs/results/paper-fashion-report.json:
    # nip lifts FGSM ε = 0.2 from .026 to .066); it must flag some and act on exactly those.
    assert flagged.any()
    moved = (defended - adv).flatten(1).abs().amax(1) > 0
    assert torch.equal(moved, flagged)                                   # NIP acts on exactly those
    assert (defended - adv).abs().max() <= p["budget"] + 1e-6            # within its budget
