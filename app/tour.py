"""The guided tour: a few one-click Explore presets that tell NIP's story, each a shareable link.

A step is data (attack, defense, what it needs, one sentence); :func:`step_query` turns it into
Explore's share-link query parameters for a model. The image of every step is the model's demo
image (``nip_core.analyses.explain.demo_image``: one its default attack fools and NIP restores), so the
story holds on each built-in model. Steps that do not apply to a model (no calibration for the
label-free ``nip``; ``nip-aware`` needs one too) say why instead of offering a link.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from app.compute import contrast_image, demo_image
from app.loaders import calibration_hint, get_model, has_calibration
from app.widgets import params_text

EXPLORE_PAGE = "views/explore.py"          # st.switch_page target (relative to app/streamlit_app.py)
PHOTO_DATASETS = ("cifar10", "imagenet")   # natural photos, for the last step
PHOTO_MODELS = ("resnet8-cifar10", "efficientnet-lite0")   # preferred order: the small one first


@dataclass(frozen=True)
class Step:
    """One stop of the tour.

    Attributes:
        key: the ``tour`` query value; title, sentence: what the page says.
        attack, attack_params, defense: the preset (attack parameters on top of the dataset defaults).
        needs: ``"calibration"`` when the step shows the label-free ``nip`` (which passes inputs
            through without one); photo: the step runs on a photo model.
        beats: the image is one where the step's attack beats ``defense`` (else: one the default
            attack fools and NIP restores).
        surgery: Explore's neuron surgery settings (``surgery``, ``surgery_value``, ...: query
            parameters); the link opens the surgery panel with them.
        pair: (model A, model B) of one dataset: the step runs on B with the same image and attack on A
            pinned beside it (Explore's "Pin and compare"), whatever the tour's model.
    """

    key: str
    title: str
    sentence: str
    attack: str
    defense: str
    attack_params: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None
    photo: bool = False
    beats: bool = False
    surgery: dict[str, str] = field(default_factory=dict)
    pair: tuple[str, str] | None = None


ROBUST_PAIR = ("lenet-fashion", "lenet-fashion-at")   # the standard model and its PGD-trained twin

STEPS: tuple[Step, ...] = (
    Step("neurons", "An image and its neurons",
         "With ε = 0 nothing is attacked. The heatmaps mark the class's front neurons (open squares: the highest "
         "influence toward the class) and its tail (open circles: the lowest influence toward it, which says "
         "nothing about how active they are).",
         "fgsm", "none", {"eps": 0.0}),
    Step("attack", "An attack suppresses the front neurons",
         "FGSM adds a small signed perturbation. The paper's signature is that an attack lowers the front neurons "
         "and raises the tail; the line below says whether this run shows it.",
         "fgsm", "none"),
    Step("oracle", "NIP with the true label restores them",
         "`nip-oracle` is told the true class and adds its own small perturbation that pushes that class's front "
         "neurons up and its tail down; it is not deployable, because at test time nobody knows the label. The "
         "line below says whether the prediction came back.",
         "fgsm", "nip-oracle"),
    Step("label-free", "The label-free nip guesses the label",
         "`nip` first checks whether the input looks attacked (early neurons outside their benign range) and "
         "then points NIP at the class of the nearest benign examples, so it needs no label, only a calibration "
         "of benign examples.",
         "fgsm", "nip", needs="calibration"),
    Step("counter-attack", "Without the neurons it works as well",
         "`counter-attack` is `nip` without the neurons: the same detection and the same class choice, then a plain "
         "push of the logits toward that class with NIP's budget and steps. Compare its defended prediction with the "
         "previous step's: on the MNIST report split it restores exactly the same digits as `nip` under every attack "
         "but C&W (one digit fewer), so the class choice does the work, not the neurons.",
         "fgsm", "counter-attack", needs="calibration"),
    Step("surgery", "Do the front neurons carry the attack?",
         "Neuron surgery sets the class's front neurons back to their benign values in the adversarial pass and "
         "changes nothing else: does the class return? The panel under the heatmaps answers, with the margins; "
         "try N random neurons (the control) and the neurons the attack changed most beside it.",
         "fgsm", "none", surgery={"surgery": "front:0.2", "surgery_value": "benign"}),
    Step("aware", "An attack that knows the defense beats it",
         "`nip-aware` fools the model and nip's neighbour vote at once: a defense tested only against attacks "
         "that ignore it looks stronger than it is.",
         "nip-aware", "nip", needs="calibration", beats=True),
    Step("robust", "A robust model beside the standard one",
         "Adversarial training (PGD training, Madry et al. 2018) is the field's usual defense: the model is retrained "
         "on attacked images, so nothing is added at test time. The same garment and the same FGSM attack, on the "
         "standard `lenet-fashion` (run A, pinned) and the adversarially trained `lenet-fashion-at` (run B): the "
         "Pin and compare panel under the Run button shows both predictions and whether each model's own front "
         "neurons fall.",
         "fgsm", "none", pair=ROBUST_PAIR),
    Step("photo", "A photo, and why it is harder",
         "Photo pixels are not nearly black or white, so a perturbation too small to see fools the model and "
         "the binarised vote that protects digits has nothing to hold on to; without a calibration `nip` passes "
         "photos through unchanged (never harming them). Switch the defense to `nip-oracle` to see what NIP "
         "could do with the true label.",
         "fgsm", "nip", photo=True),
)
BY_KEY = {s.key: s for s in STEPS}


def tour_models() -> list[str]:
    """The built-in models, digits and clothing first (they can show every step)."""
    from nip_core.byom import is_custom
    from nip_core.models import MODELS

    shipped = [m for m in MODELS if not is_custom(m)]
    return sorted(shipped, key=lambda m: MODELS[m].gallery in PHOTO_DATASETS)


def photo_model(model_name: str) -> str | None:
    """The model of the photo step: the tour's model when it is a photo model, else a built-in one."""
    from nip_core.models import MODELS

    if MODELS[model_name].gallery in PHOTO_DATASETS:
        return model_name
    return next((m for m in PHOTO_MODELS if m in MODELS), None)


def step_model(step: Step, model_name: str) -> str | None:
    if step.pair:
        return step.pair[1]
    return photo_model(model_name) if step.photo else model_name


def why_not(step: Step, model_name: str) -> str | None:
    """Why ``step`` cannot run on ``model_name`` (None when it can)."""
    from nip_core.attacks import ATTACKS

    target = step_model(step, model_name)
    if target is None:
        return "no photo model is installed."
    if step.pair:
        from nip_core.models import MODELS

        missing = [m for m in step.pair if m not in MODELS]
        if missing:
            return f"{', '.join(missing)} is not installed."
        for m in step.pair:
            try:
                get_model(m)
            except Exception as exc:       # e.g. weights not shipped
                return f"{m} cannot be loaded: {exc}"
    model = get_model(target)
    if step.needs == "calibration" and not has_calibration(target):
        return calibration_hint(target)
    if not ATTACKS[step.attack].applies_to(model):
        return f"`{step.attack}` does not apply to {target}."
    return None


def step_image(step: Step, model_name: str) -> str:
    """The step's gallery image on its model: one that tells the step's part of the story.

    The defense-aware step's image is shipped (``assets/tour.json``, written by
    ``scripts/tour_examples.py``: finding it runs the slow attack image after image); a model without
    one gets the image of the other steps (so the ``counter-attack`` ablation runs on the image of the
    label-free ``nip`` step, and the surgery step on that of the attack step).
    """
    if step.pair:
        return contrast_image(*step.pair, step.attack)
    if step.beats:
        shipped = shipped_examples().get(model_name, {})
        if shipped.get("weights_sha256") == get_model(model_name).weights_sha256 and "aware" in shipped:
            return shipped["aware"]
    restore = ("nip-oracle", "nip") if has_calibration(model_name) else ("nip-oracle",)
    return demo_image(model_name, "fgsm", restore)


def shipped_examples() -> dict[str, dict[str, str]]:
    """``assets/tour.json``: model → {"weights_sha256", "aware": gallery key}, or {} when absent."""
    import json

    from nip_core.runtime import ASSETS

    path = ASSETS / "tour.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def step_query(step: Step, model_name: str) -> dict[str, str]:
    """Explore's query parameters for ``step`` on the tour's model ``model_name``."""
    target = step_model(step, model_name)
    q = {"model": target, "image": step_image(step, target), "attack": step.attack}
    if step.attack_params:
        q["ap"] = params_text(step.attack_params)
    q |= {"defense": step.defense, "seed": "0"} | step.surgery | {"tour": step.key}
    if step.pair:       # run A: the same image and attack on the pair's first model, pinned
        q |= {"pin_model": step.pair[0], "pin_image": q["image"], "pin_attack": step.attack,
              "pin_defense": step.defense, "pin_seed": "0"}
        if step.attack_params:
            q["pin_ap"] = q["ap"]
    if target != model_name:
        q["tm"] = model_name
    return q


def step_link(step: Step, model_name: str) -> str:
    """A relative share link (``./?model=…``): Explore is the app's default page."""
    return "./?" + urlencode(step_query(step, model_name))


def _moved(before: float, after: float, up: str, down: str) -> str:
    return f"{up if after > before else down if after < before else 'stayed'} ({before:.3g} → {after:.3g})"


def step_claim(expl) -> str:
    """What this run shows, in one sentence computed from it (issue 26: the tour never states an
    outcome its run does not have): the three predictions, and the front and tail groups' mean
    activations (``Explanation.group_means``, the quantity of the page's verdict line)."""
    ref = expl.reference_class
    names = [f"class {c}" if n == str(c) else n for c, n in enumerate(expl.class_names)]
    b, a, d = (expl.prediction(v) for v in ("benign", "adversarial", "defended"))
    flipped = a != b
    out = [f"**In this run:** the model predicts {names[b]} on the benign image and {names[a]} under attack "
           f"({'the attack flipped it' if flipped else 'the attack did not flip it'})"]
    if expl.defense != "none":
        if d == a:
            what = "left the prediction as it was"
        elif d == ref:
            what = f"restored {names[ref]}" if flipped else f"kept {names[ref]}"
        else:
            what = f"changed it to {names[d]}"
        out[0] += f"; `{expl.defense}` {what}"
    g = expl.group_means("activations")
    if expl.norms("adversarial")["linf"] > 0:
        out.append(f"Under attack the front neurons' mean activation "
                   f"{_moved(g['benign']['front'], g['adversarial']['front'], 'rose', 'fell')} "
                   "and the tail neurons' mean "
                   f"{_moved(g['benign']['tail'], g['adversarial']['tail'], 'gained', 'did not gain')}")
    if expl.defense != "none":
        if expl.norms("defended") == expl.norms("adversarial"):    # nothing added to the adversarial
            out.append(f"`{expl.defense}` passed the input through unchanged")
        else:
            out.append(f"The defense moved the front "
                       f"{_moved(g['adversarial']['front'], g['defended']['front'], 'up', 'down')} and the tail "
                       f"{_moved(g['adversarial']['tail'], g['defended']['tail'], 'up', 'down')}")
    return ". ".join(out) + "."
