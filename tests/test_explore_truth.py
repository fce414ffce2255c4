"""What Explore states about a run is computed from that run (issue 26 §4): the ε = 0 difference
map is all zero on a scale not stretched to rounding noise, front and tail neurons are marked on
the heatmaps, and each tour step's claim agrees with its run's computed verdict."""
import numpy as np
import pytest

from nip_core import figures as F
from nip_core.analyses.explain import explain
from nip_core.data import gallery
from nip_core.models import load_model


@pytest.fixture(scope="module")
def eps0():
    m = load_model("lenet-mnist")
    it = gallery(m.spec.gallery)[0]
    return explain(m, it.image, it.label, attack="fgsm", attack_params={"eps": 0.0}, defense="none", seed=0)


def _values(fig):
    return [np.asarray(t.z, dtype=float) for t in fig.data if t.type == "heatmap" and t.name != "dead"]


@pytest.mark.parametrize("quantity", ["influence", "activations"])
def test_eps0_difference_map_is_all_zero_on_an_unstretched_scale(eps0, quantity):
    fig = F.difference_heatmaps(eps0, quantity)
    zs = _values(fig)
    assert len(zs) == 2 and all(np.nanmax(np.abs(z)) == 0 for z in zs)   # was ±6e-8 for influence
    benign = float(np.abs(np.asarray(getattr(eps0, quantity)["benign"])).max())
    assert fig.layout.coloraxis.cmax == pytest.approx(benign) and benign > 0.1
    assert all("(no change)" in a.text for a in fig.layout.annotations[:2])


def test_snap_to_zero_keeps_real_differences():
    b = np.array([3.0, -2.0, 1.0, 0.0])
    d = np.array([6e-8, -1e-7, 1e-3, 0.5])
    assert F.snap_to_zero(d, b).tolist() == [0.0, 0.0, 1e-3, 0.5]


@pytest.mark.parametrize("figure", ["influence_heatmaps", "difference_heatmaps"])
def test_front_and_tail_neurons_are_marked_on_the_heatmaps(eps0, figure):
    fig = getattr(F, figure)(eps0)
    cols = F.grid_shape(len(eps0.influence["benign"]))[1]
    for group, idx in (("front", eps0.front), ("tail", eps0.tail)):
        marks = [t for t in fig.data if t.type == "scatter" and t.name == f"{group} neurons"]
        panels = 3 if figure == "influence_heatmaps" else 2
        assert len(marks) == panels
        want = sorted((int(j) % cols, int(j) // cols) for j in np.asarray(idx))
        for t in marks:
            assert sorted(zip(map(int, t.x), map(int, t.y))) == want
