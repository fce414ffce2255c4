"""A first run shows NIP acting (issue 26 §5): on every built-in model, the default image, attack
and defense (``ModelSpec.first_run``) give a benign image the model gets right, an adversarial it
gets wrong, and a defended input it gets right again."""
import pytest

from nip_core.analyses.explain import explain
from nip_core.attacks import ATTACKS
from nip_core.data import gallery
from nip_core.defenses import DEFENSES
from nip_core.models import load_model

BUILT_IN = ["lenet-mnist", "lenet-fashion", "lenet-fashion-at", "resnet8-cifar10", "efficientnet-lite0"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_default_first_run_flips_and_restores(name):
    model = load_model(name)
    first = model.spec.first_run
    items = gallery(model.spec.gallery)
    item = next(it for it in items if it.key == first.image) if first.image else items[0]
    assert ATTACKS[first.attack].applies_to(model) and first.defense in DEFENSES
    e = explain(model, item.image, item.label, attack=first.attack, defense=first.defense, seed=0)
    assert e.prediction("benign") == item.label
    assert e.prediction("adversarial") != item.label       # the attack flips it ...
    assert e.prediction("defended") == item.label           # ... and the default defense restores it


def test_the_default_is_the_deployable_nip_where_it_works_and_labelled_where_not():
    # MNIST: label-free nip restores the first run; elsewhere the oracle is the default, and it is the
    # one defense that needs the true label (the page labels it so in one line).
    assert load_model("lenet-mnist").spec.first_run.defense == "nip"
    for name in BUILT_IN[1:]:
        d = DEFENSES[load_model(name).spec.first_run.defense]
        assert d.needs_labels and not d.deployable, name
