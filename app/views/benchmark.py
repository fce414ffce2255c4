"""Benchmark: the shipped result tables on arrival, any results JSON, or a new grid (on your own data too)."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app.compute import evaluation
from app.loaders import DATA_MAX_IMAGES, DATA_UPLOAD_MAX_MB, user_data
from app.notes import aware_note
from app.progress import run_with_progress
from app.views import slices_panel
from app.widgets import guarded, init_state, model_picker, show_error
from nip_core import figures as F
from nip_core.attacks import ATTACKS
from nip_core.defenses import DEFENSES
from nip_core.errors import InputError

P = "benchmark."
DEFAULTS = {"model": "lenet-mnist", "attacks": ["fgsm", "pgd"],
            "defenses": ["none", "jpeg", "random-sign", "nip", "nip-oracle"], "n": 20, "seed": 0}
METRICS = {"defended_adv_accuracy": "accuracy after defense (with benign and adaptive rows)",
           "defense_success_rate": "defense success rate (share of successful adversarials restored)",
           "benign_accuracy": "benign accuracy after defense", "adv_accuracy": "accuracy with no defense"}
SOURCES = {"shipped": "Shipped results", "open": "Open a results JSON", "run": "Run a new grid"}
SPLITS = ("all", "tune", "report", "calib")


def main() -> None:
    st.title("Benchmark")
    st.markdown("Held-out images the model classifies correctly are attacked once per attack; each defense is "
                "applied to the adversarials and to the benign images. The **adaptive** row attacks each "
                "deployable defense directly (PGD through model ∘ defense with a straight-through gradient). "
                "The **defense-aware** row is an attack that also targets the defense's own decision: for the "
                "label-free `nip` it fools the benign-neighbour vote too, which is `nip`'s weak point "
                f"({aware_note()}). "
                "`nip-oracle` uses true labels, so it is not deployable and has no adaptive number.")
    source = st.radio("Show", list(SOURCES), format_func=SOURCES.get, horizontal=True,
                      key=init_state(P + "source", "shipped"), label_visibility="collapsed")
    with guarded("the benchmark page"):
        {"shipped": shipped_view, "open": open_view, "run": run_view}[source]()


# ----------------------------------------------------------------------------- the three sources

def shipped_view() -> None:
    """The report runs that ship with the app (``docs/results``), shown without computing anything."""
    from nip_core.evaluation.results import (shipped_adversarial_training, shipped_elastic, shipped_mediation, shipped_result,
                                  shipped_suites)

    suites = shipped_suites()
    if not suites:
        st.info("No result files ship in docs/results; run a grid below or open a results JSON.")
        return

    def label(suite: str) -> str:
        r = shipped_result(suites[suite])
        return f"{suite} — {r.get('model', '?')}, {r.get('split', '?')} split, {r.get('n_images', '?')} images"

    suite = st.selectbox("Shipped suite", list(suites), key=init_state(P + "suite", next(iter(suites))),
                         format_func=label)
    st.caption(f"`docs/results/{suites[suite]}`: the suite's report run, as the README quotes it. Reproduce it "
               f"with `python -m nip_core evaluate --suite {suite}`; nothing is recomputed here.")
    show(shipped_result(suites[suite]), "shipped")
    elastic = shipped_elastic(suite)
    if elastic is not None and st.toggle("Attack strength: accuracy against ε for each defense",
                                         key=init_state(P + "shipped.elastic", False)):
        st.caption(f"`docs/results/{elastic}`: `python -m nip_core evaluate --suite {suite} --split report "
                   "--attacks fgsm,pgd --eps-grid …` (docs/elasticity.md, disclosed in docs/nip-research.md); "
                   "no adaptive or black-box column. Nothing is recomputed here.")
        elasticity_section(shipped_result(elastic), P + f"shipped.elastic.{suite}.")
    med = shipped_mediation(suite)
    if med is not None and st.toggle("Neuron mediation: put neurons back and watch the class return",
                                     key=init_state(P + "shipped.mediation", False)):
        st.caption(f"`docs/results/{med}`: `python -m nip_core evaluate --suite {suite} --split report --mediation` "
                   "with the mediated defenses only (docs/nip-research.md, Round 5); nothing is recomputed here.")
        mediation_section(shipped_result(med), P + f"shipped.med.{suite}.")
    at_file = shipped_adversarial_training(suite)
    if at_file is not None and st.toggle("Adversarial training: the robust model on the same images",
                                         key=init_state(P + "shipped.at", False)):
        adversarial_training_section(shipped_result(suites[suite]), shipped_result(at_file), at_file,
                                     P + f"shipped.at.{suite}.")


def open_view() -> None:
    """A results JSON from the CLI, this page's download or a Ray run, validated, then shown."""
    from nip_core.evaluation.results import MAX_RESULT_BYTES, read_result

    up = st.file_uploader(f"Results JSON (`python -m nip_core evaluate … --out FILE.json`, this page's download, "
                          f"or a Ray run; at most {MAX_RESULT_BYTES // 2**20} MB)", type=["json"],
                          key=P + "result_file")
    if up is None:
        st.info("Open the .json an evaluation wrote to view its tables here, without recomputing.")
        return
    try:
        result = read_result(up.getvalue(), up.name)
    except InputError as exc:   # its message names the file
        st.error(str(exc))
        return
    st.caption(f"Opened {up.name}: nothing is recomputed.")
    show(result, "open")


def run_view() -> None:
    picked = model_picker(P + "model", DEFAULTS["model"])
    if picked is None:
        return
    model, loaded = picked
    upload, data = data_panel(model)
    usable = sorted(a for a in ATTACKS if ATTACKS[a].applies_to(loaded))
    ak = init_state(P + "attacks", DEFAULTS["attacks"])
    st.session_state[ak] = [a for a in st.session_state[ak] if a in usable]
    with st.form(P + "form"):
        c = st.columns([3, 3, 1, 1, 1])
        attacks = c[0].multiselect("Attacks", usable, key=ak)
        defenses = c[1].multiselect("Defenses", list(DEFENSES),
                                    key=init_state(P + "defenses", DEFAULTS["defenses"]),
                                    format_func=lambda d: d + ("" if DEFENSES[d].deployable else " (not deployable)"))
        n = int(c[2].number_input("N images", 1, 500, step=5, key=init_state(P + "n", DEFAULTS["n"])))
        seed = int(c[3].number_input("Seed", 0, 2**31 - 1, step=1, key=init_state(P + "seed", DEFAULTS["seed"])))
        split = c[4].selectbox("Split", SPLITS, key=init_state(P + "split", "all"),
                               help="Which part of the images: on your own data a seeded 30/40/30 split into "
                                    "tune/report/calib; on the built-in data its fixed splits (report: the clean "
                                    "table; calib: what nip's thresholds are placed on).")
        adaptive = st.checkbox("Adaptive attack row (slow: PGD through NIP costs about 2 minutes for LeNet at N = 20)",
                               key=init_state(P + "adaptive", False))
        st.caption("Each unit runs with its dataset defaults (see the Explore page for their parameters). "
                   "Without the adaptive row the defaults finish in under a minute on a CPU; EfficientNet uses the "
                   "few shipped photos. "
                   + (f"Images: your data ({data.summary_line()})." if data is not None else
                      "Images: the model's built-in held-out images."))
        submitted = st.form_submit_button("Run benchmark", type="primary")

    if submitted:
        if not attacks or not defenses:
            st.error("Pick at least one attack and one defense.")
        else:
            args = (model, tuple((a, ()) for a in attacks), tuple((d, ()) for d in defenses), n, seed, adaptive,
                    split, upload)
            try:
                run_with_progress("Running benchmark", evaluation, *args)
                st.session_state[P + "args"] = args
            except Exception as exc:
                show_error(exc, "benchmark")

    args = st.session_state.get(P + "args")
    if args is None:
        st.info("Choose the grid and press **Run benchmark**.")
        return
    show(evaluation(*args), "run")


def data_panel(model: str) -> tuple[tuple[str, bytes] | None, object | None]:
    """Bring your own labelled data: upload, safe extraction and loading, and what was skipped.

    Returns ``((file name, bytes), LabelledData)`` for usable data, else ``(None, None)``.
    """
    with st.expander("Bring your own data", expanded=bool(st.session_state.get(P + "data_file"))):
        st.caption(f"A **.zip** holding one folder of images per class (folder names: the model's class names "
                   f"or class indices), or a **.npz** with arrays `x` (N×H×W or N×H×W×C, uint8 or [0,1] floats) "
                   f"and `y` (class indices); at most {DATA_UPLOAD_MAX_MB} MB and {DATA_MAX_IMAGES} images. "
                   "Archives are checked before anything is extracted (no paths outside the archive, no links, "
                   "no zip bombs); files that cannot be used are skipped and listed.")
        up = st.file_uploader("Labelled data (.zip or .npz)", type=["zip", "npz"], key=P + "data_file")
        if up is None:
            return None, None
        try:
            with st.spinner(f"Reading {up.name}"):
                data = user_data(model, up.name, up.getvalue())
        except Exception as exc:
            if isinstance(exc, InputError):
                st.error(f"Cannot use {up.name}: {exc}")
            else:
                show_error(exc, "reading uploaded data")
            return None, None
        st.success(data.summary_line()[0].upper() + data.summary_line()[1:] + ".")
        counts = data.class_counts()
        st.caption("Images per class: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if data.skipped:
            st.markdown(f"**Skipped files** ({len(data.skipped)})")
            st.dataframe(pd.DataFrame(data.skipped, columns=["file", "kind", "reason"]), hide_index=True,
                         width="stretch", key=P + "skipped")
        return (up.name, up.getvalue()), data


# ----------------------------------------------------------------------------- one result

def show(result: dict, where: str) -> None:
    """A result's heatmap, tables with Wilson intervals, paired tests and downloads (``where``: key prefix)."""
    from nip_core.evaluation.evaluate import accuracy_intervals, paired_rows, to_csv

    k = P + where + "."
    st.subheader(f"{result['model']}: {result['n_images']} images ({result.get('split', 'all')} split), "
                 f"seed {result.get('seed', '?')}")
    cols = st.columns(3)
    clean = result.get("heldout_clean_accuracy")
    cols[0].metric("held-out clean accuracy", "n/a" if clean is None else f"{100 * clean:.1f}%")
    cols[1].metric("images", result["n_images"])
    secs = result.get("seconds_total")
    cols[2].metric("wall time", "n/a" if secs is None else f"{secs:.1f} s")
    data = result.get("data")
    if isinstance(data, dict) and data.get("images_of"):
        st.caption(f"Images: {data['summary']}. Counted unconditionally: an image {result['model']} misclassifies "
                   "when clean counts as wrong under every attack and defense.")
    elif isinstance(data, dict) and data.get("summary"):
        st.caption(f"Images: your data, {data['summary']} ({data.get('split', 'all')} split).")
    for w in result.get("warnings") or []:
        st.warning(f"Note on this table: {w}")
    metric = st.radio("Heatmap", list(METRICS), format_func=METRICS.get, horizontal=True,
                      key=init_state(k + "metric", "defended_adv_accuracy"))
    st.plotly_chart(F.evaluation_heatmap(result, metric), key=k + "fig.grid", width="stretch")
    st.markdown("**Summary per defense**")
    summ = result["summary"]
    st.dataframe([{"defense": d, "deployable": _deployable(d),
                   "mean accuracy under attack": summ["mean_adv_accuracy"].get(d),
                   "benign accuracy": summ["benign_accuracy"].get(d),
                   "adaptive accuracy": summ.get("adaptive_accuracy", {}).get(d),
                   "defense-aware accuracy": summ.get("adaptive_aware_accuracy", {}).get(d)}
                  for d in result["defenses"]],
                 hide_index=True, width="stretch", key=k + "summary")
    st.markdown("**Accuracy after each defense, with Wilson intervals (95 percent)**")
    st.dataframe(accuracy_intervals(result), hide_index=True, width="stretch", key=k + "intervals",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("accuracy", "ci_low", "ci_high")})
    st.caption("With a few dozen images an interval spans tens of points: two defenses whose intervals overlap "
               "widely are not told apart by this table; the paired test below compares them image by image.")
    pairs = paired_rows(result)
    if pairs:
        st.markdown("**`nip` against each other defense, image by image**")
        st.dataframe(pairs, hide_index=True, width="stretch", key=k + "pairs",
                     column_config={"McNemar p": st.column_config.NumberColumn(format="%.3g")})
        st.caption("Images only `nip` gets right, images only the other defense gets right, and the exact McNemar "
                   "p-value. With a few dozen images, a lead of a few images is a tie (large p).")
    else:
        st.caption("No image-by-image comparison: this result has no per-image records for `nip`.")
    slices_panel.section(result, where)
    with st.expander("Every row (one per attack × defense)"):
        keep = ["attack", "defense", "deployable", "adv_accuracy", "defended_adv_accuracy", "benign_accuracy",
                "defense_success_rate", "linf_mean", "l2_mean", "attack_seconds_per_image",
                "defense_seconds_per_image"]
        adaptive = result.get("adaptive") or {}
        st.dataframe([{c: r.get(c) for c in keep}
                      | {"adaptive_accuracy": adaptive.get(r["defense"], {}).get("accuracy"),
                         "defense_aware_accuracy": adaptive.get(r["defense"], {}).get("aware", {}).get("accuracy")}
                      for r in result["rows"]], hide_index=True, width="stretch", key=k + "rows")
    if result.get("elasticity") and where != "shipped":
        with st.expander("Accuracy against attack strength"):
            elasticity_section(result, k + "elastic.")
    if result.get("mediation") and where != "shipped":
        with st.expander("Neuron mediation"):
            mediation_section(result, k + "med.")
    d = st.columns(2)
    d[0].download_button("Download CSV", to_csv(result), file_name="nip_benchmark.csv", mime="text/csv",
                         key=k + "csv")
    d[1].download_button("Download JSON", json.dumps(result, indent=2, default=float), file_name="nip_benchmark.json",
                         mime="application/json", key=k + "json")


def adversarial_training_section(standard: dict, robust: dict, file_name: str, k: str) -> None:
    """The field's baseline beside the standard model: the adversarially trained model's report run on
    the standard model's report images (``evaluate --images-of``), the two side by side, and each
    model's card figures (clean, PGD-20, AutoAttack on the official test set)."""
    from nip_core.evaluation.results import adversarial_training_comparison
    from nip_core.evaluation.robustness import card_robustness

    a, b, data = standard["model"], robust["model"], robust["data"]
    n, split = robust["n_images"], robust.get("split", "report")
    st.markdown(f"**Adversarial training: `{b}` on `{a}`'s {n} {split} images**")
    st.caption(f"`docs/results/{file_name}`: `python -m nip_core evaluate --suite {robust.get('suite', '')} --model {b} "
               f"--images-of {a} --split {split} --no-blackbox` (disclosed in docs/nip-research.md). Both tables are "
               f"on the same {n} images, {a}'s {split} split: the held-out images {a} classifies correctly, so {a}'s "
               f"clean accuracy on them is 1 by construction, while {b} classifies {data['clean_correct']} of them "
               f"correctly ({100 * data['clean_accuracy']:.1f}%). Counted unconditionally: an image a model gets "
               "wrong when clean counts as wrong under every attack. The black-box (Square) column is in neither "
               "table; the adaptive column is BPDA PGD through each defense.")
    cards = {m: card_robustness(m) for m in (a, b)}
    if all(cards.values()):
        cols = st.columns(6)
        for i, (m, rob) in enumerate(cards.items()):
            for j, what in enumerate(("clean", "pgd", "autoattack")):
                label = {"clean": "clean", "pgd": "PGD-20", "autoattack": "AutoAttack"}[what]
                cols[3 * i + j].metric(f"{m}: {label}", f"{100 * rob[what]['accuracy']:.1f}%")
        rob = cards[b]
        pgd, aa = rob["pgd"]["params"], rob["autoattack"]["params"]
        st.caption(f"From each model's card (`{rob['command']}`, and the same for {a}): clean accuracy on the "
                   f"{rob['clean']['n']:,} official test images; PGD-{pgd['max_iter']} (ε {pgd['eps']:g}, step "
                   f"{pgd['eps_step']:g}, random start) on the first {rob['pgd']['n']:,}; ART's AutoAttack (ε "
                   f"{aa['eps']:g}: APGD-CE and APGD-DLR with {aa['restarts']} restarts of {aa['max_iter']} steps, "
                   f"DeepFool, Square with {aa['square_queries']:,} queries) on the first {rob['autoattack']['n']:,}; "
                   "counted unconditionally.")
    cmp = adversarial_training_comparison(standard, robust)
    fmt = {c: st.column_config.NumberColumn(format="%.3f") for row in cmp["by_defense"][:1] for c in row if c != "defense"}
    st.markdown("**Accuracy under each attack: no defense on either model, and `nip` on the standard one**")
    st.dataframe(cmp["by_attack"], hide_index=True, width="stretch", key=k + "by_attack",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in cmp["by_attack"][0]
                                if c != "attack"})
    st.markdown("**Every defense on both models** (benign accuracy, mean accuracy over the suite's attacks, "
                "adaptive accuracy)")
    st.dataframe(cmp["by_defense"], hide_index=True, width="stretch", key=k + "by_defense", column_config=fmt)
    with st.expander(f"`{b}`: its whole table (heatmap, intervals, paired tests)"):
        show(robust, "shipped-at")


def elasticity_section(result: dict, k: str) -> None:
    """A result's ``elasticity`` block (``evaluate --eps-grid``): accuracy against ε per defense."""
    block = result["elasticity"]
    attacks = list(block["by_attack"])
    c = st.columns([1, 2])
    attack = c[0].selectbox("Attack", attacks, key=init_state(k + "attack", attacks[-1]))
    names = list(block["by_attack"][attack]["defenses"])
    default = [d for d in names if d.split("[")[0] in ("jpeg", "nip", "nip-oracle", "counter-attack-oracle",
                                                         "random-sign")] or names
    short = dict(zip(names, F.bare_names(names)))
    shown = c[1].multiselect("Defenses", names, key=init_state(k + "defenses", default), format_func=short.get)
    st.plotly_chart(F.elasticity_figure(block, attack, shown), key=k + "fig", width="stretch")
    note = block.get("note", "")
    st.caption("The dashed line is the model without a defense. " + note[:1].upper() + note[1:] + ".")


def mediation_section(result: dict, k: str) -> None:
    """A result's ``mediation`` block (``evaluate --mediation``): per attack and layer, which neuron groups
    restore the class when put back to their benign values, and how much of each defense's margin
    recovery the front+tail neurons carry, each beside a random group of the same size."""
    from nip_core.analyses.mediation import mediation_default_layer, mediation_table

    block = result["mediation"]
    attacks, layers = list(block["by_attack"]), block["layers"]
    c = st.columns(2)
    attack = c[0].selectbox("Attack", attacks, key=init_state(k + "attack", attacks[0]))
    layer = c[1].selectbox("Layer", layers, key=init_state(k + "layer", mediation_default_layer(result)))
    cell = block["by_attack"][attack][layer]
    if not cell.get("n_successful"):
        st.info("The attack fooled none of these images: there is nothing to put back.")
        return
    st.markdown("**Does the attack work through the influence-named neurons?** Each bar puts one group of the "
                "adversarial pass's neurons back to its benign values. *random* groups (same size, live neurons) "
                "are the control; *changed* (the neurons the attack moved most) is the upper reference.")
    st.plotly_chart(F.mediation_groups_figure(cell), key=k + "fig.groups", width="stretch")
    st.markdown("**Does each defense work through them?** The share of the defense's margin recovery that the "
                "true class's front+tail neurons carry (their defended values patched in), beside a random group "
                "of the same size.")
    st.plotly_chart(F.mediation_defenses_figure(cell), key=k + "fig.defenses", width="stretch")
    with st.expander("Every attack and layer"):
        rows = mediation_table(result)
        st.dataframe(rows, hide_index=True, width="stretch", key=k + "table",
                     column_config={c: st.column_config.NumberColumn(format="%.2f") for c in rows[0] if ":" in c})
    st.caption("Method: docs/method.md §8. Intervals: seeded bootstrap over images (95 percent).")


def _deployable(label: str) -> bool | None:
    unit = DEFENSES.get(label.split("[")[0])
    return None if unit is None else unit.deployable


main()
