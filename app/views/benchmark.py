"""Benchmark: a model × attacks × defenses evaluation grid on held-out images."""
from __future__ import annotations

import json

import streamlit as st

from app import common as C
from nip_core import figures as F
from nip_core.attacks import ATTACKS
from nip_core.defenses import DEFENSES

P = "benchmark."
DEFAULTS = {"model": "lenet-mnist", "attacks": ["fgsm", "pgd"],
            "defenses": ["none", "jpeg", "random-sign", "nip", "nip-oracle"], "n": 20, "seed": 0}
METRICS = {"defended_adv_accuracy": "accuracy after defense (with benign and adaptive rows)",
           "defense_success_rate": "defense success rate (share of successful adversarials restored)",
           "benign_accuracy": "benign accuracy after defense", "adv_accuracy": "accuracy with no defense"}


def main() -> None:
    st.title("Benchmark")
    st.markdown("Held-out images the model classifies correctly are attacked once per attack; each defense is "
                "applied to the adversarials and to the benign images. The **adaptive** row attacks each "
                "deployable defense directly (PGD through model ∘ defense with a straight-through gradient). "
                "The **defense-aware** row is an attack that also targets the defense's own decision: for the "
                "label-free `nip` it fools the benign-neighbour vote too, which is `nip`'s weak point "
                f"({C.aware_note()}). "
                "`nip-oracle` uses true labels, so it is not deployable and has no adaptive number.")
    with st.form(P + "form"):
        c = st.columns([2, 3, 3, 1, 1])
        model = c[0].selectbox("Model", C.visible_models(st.session_state.get(C.BYOM_KEY, [])),
                               key=C.init_state(P + "model", DEFAULTS["model"]))
        attacks = c[1].multiselect("Attacks", sorted(ATTACKS), key=C.init_state(P + "attacks", DEFAULTS["attacks"]))
        defenses = c[2].multiselect("Defenses", list(DEFENSES),
                                    key=C.init_state(P + "defenses", DEFAULTS["defenses"]),
                                    format_func=lambda d: d + ("" if DEFENSES[d].deployable else " (not deployable)"))
        n = int(c[3].number_input("N images", 1, 500, step=5, key=C.init_state(P + "n", DEFAULTS["n"])))
        seed = int(c[4].number_input("Seed", 0, 2**31 - 1, step=1, key=C.init_state(P + "seed", DEFAULTS["seed"])))
        adaptive = st.checkbox("Adaptive attack row (slow: PGD through NIP costs about 2 minutes for LeNet at N = 20)",
                               key=C.init_state(P + "adaptive", False))
        st.caption("Each unit runs with its dataset defaults (see the Explore page for their parameters). "
                   "Without the adaptive row the defaults finish in under a minute on a CPU; EfficientNet uses the few shipped photos.")
        submitted = st.form_submit_button("Run benchmark", type="primary")

    if submitted:
        if not attacks or not defenses:
            st.error("Pick at least one attack and one defense.")
        else:
            args = (model, tuple((a, ()) for a in attacks), tuple((d, ()) for d in defenses), n, seed, adaptive)
            try:
                C.run_with_progress("Running benchmark", C.evaluation, *args)
                st.session_state[P + "args"] = args
            except Exception as exc:
                C.show_error(exc, "benchmark")

    args = st.session_state.get(P + "args")
    if args is None:
        st.info("Choose the grid and press **Run benchmark**.")
        return
    with C.guarded("showing the benchmark"):
        result = C.evaluation(*args)
        show(result)


def show(result: dict) -> None:
    st.subheader(f"{result['model']}: {result['n_images']} held-out images, seed {result['seed']}")
    cols = st.columns(3)
    cols[0].metric("held-out clean accuracy", f"{100 * result['heldout_clean_accuracy']:.1f}%")
    cols[1].metric("images", result["n_images"])
    cols[2].metric("wall time", f"{result['seconds_total']:.1f} s")
    metric = st.radio("Heatmap", list(METRICS), format_func=METRICS.get, horizontal=True,
                      key=C.init_state(P + "metric", "defended_adv_accuracy"))
    st.plotly_chart(F.evaluation_heatmap(result, metric), key=P + "fig.grid", width="stretch")
    st.markdown("**Rows** (one per attack × defense)")
    keep = ["attack", "defense", "deployable", "adv_accuracy", "defended_adv_accuracy", "benign_accuracy",
            "defense_success_rate", "linf_mean", "l2_mean", "attack_seconds_per_image", "defense_seconds_per_image"]
    st.dataframe([{k: r.get(k) for k in keep} | {"adaptive_accuracy": result["adaptive"].get(r["defense"], {})
                                                   .get("accuracy"),
                                                   "defense_aware_accuracy": result["adaptive"].get(r["defense"], {})
                                                   .get("aware", {}).get("accuracy")} for r in result["rows"]],
                 hide_index=True, width="stretch")
    st.markdown("**Summary per defense**")
    summ = result["summary"]
    st.dataframe([{"defense": d, "deployable": DEFENSES[d.split("[")[0]].deployable,
                   "mean accuracy under attack": summ["mean_adv_accuracy"].get(d),
                   "benign accuracy": summ["benign_accuracy"].get(d),
                   "adaptive accuracy": summ["adaptive_accuracy"].get(d),
                   "defense-aware accuracy": summ.get("adaptive_aware_accuracy", {}).get(d)}
                  for d in result["defenses"]],
                 hide_index=True, width="stretch")
    from nip_core.evaluate import paired_rows, to_csv
    pairs = paired_rows(result)
    if pairs:
        st.markdown("**`nip` against each other defense, image by image**")
        st.dataframe(pairs, hide_index=True, width="stretch",
                     column_config={"McNemar p": st.column_config.NumberColumn(format="%.3g")})
        st.caption("Images only `nip` gets right, images only the other defense gets right, and the exact McNemar "
                   "p-value. With a few dozen images, a lead of a few images is a tie (large p).")
    d = st.columns(2)
    d[0].download_button("Download CSV", to_csv(result), file_name="nip_benchmark.csv", mime="text/csv",
                         key=P + "csv")
    d[1].download_button("Download JSON", json.dumps(result, indent=2, default=float), file_name="nip_benchmark.json",
                         mime="application/json", key=P + "json")


main()
