"""Method: NIP as implemented, what each chart shows, and the honest limits."""
from __future__ import annotations

import streamlit as st

from app.notes import label_free_note
from nip_core.runtime import REPO_ROOT

P = "method."


def main() -> None:
    st.title("The method: Neuron-level Inverse Perturbation")
    st.markdown("Chen et al., *Fight Perturbations with Perturbations: Defending Adversarial Attacks via Neuron "
                "Influence* (arXiv 2112.13060). Adversarial examples **suppress** the neurons that matter most "
                "for the true class (*front* neurons: the highest influence toward it) and **enhance** those with the "
                "lowest influence toward it (*tail* neurons; low influence, not low activity). "
                "NIP pushes back: before classifying, it adds a small *inverse perturbation* that raises the front "
                "and lowers the tail.")
    st.subheader("As implemented (nip_core/nip.py)")
    st.markdown("With $a_j(x)$ neuron $j$'s activation (conv channels averaged over positions), $F$ and $T$ the "
                "front and tail groups of a benign influence profile, budget $\\varepsilon$, step size $\\alpha$ "
                "and $T$ steps:")
    st.latex(r"J(x) = \operatorname{mean}_{j \in F} a_j(x) \;-\; \operatorname{mean}_{j \in T} a_j(x)")
    st.latex(r"\delta_0 = 0,\qquad \delta_{t+1} = \Pi_{\|\delta\|_\infty \le \varepsilon,\; x+\delta \in [0,1]}"
             r"\big(\delta_t + \alpha\,\operatorname{sign}\nabla_\delta J(x + \delta_t)\big),\quad t = 0,\dots,T-1")
    st.markdown("The classifier then sees $x + \\delta_T$. Which profile gives $F$ and $T$? The true class is "
                "unknown at defense time, so:\n"
                "- `nip-oracle` — the true class's profile (**analysis only, not deployable**);\n"
                "- `nip-global` — the global (all-class) profile (label-free);\n"
                "- `nip-topk` — class-conditional over the model's top-K candidate classes: run NIP once per "
                "candidate and keep the one whose defended input scores best (`margin`: its logit minus the best "
                "other logit; `confidence`: its softmax probability);\n"
                "- `nip` (= `nip-neighbours`, the deployable default on MNIST) — detect first: an input is "
                "flagged when many of its "
                "`conv1` neurons leave the range they take on benign training images (or, if some do, when its "
                "benign neighbours disagree with the prediction or the prediction is a close call). A flagged "
                "input gets NIP toward the class of its 10 nearest benign training images, compared by the "
                "`conv1` maps of "
                "the input **binarised** at 0.4 (an L∞ change of 0.3 cannot flip MNIST's near-0 and near-1 "
                "pixels, so the attacker can hardly move this vote). If only a few neurons left their range "
                "(a minimal attack such as DeepFool) and small random noise changes the model's average "
                "prediction, NIP goes toward that noisy prediction instead (the *pocket rule*). Other inputs pass "
                "unchanged. It needs a **calibration**, labelled benign images in the model's classes: the MNIST "
                "and Fashion-MNIST models ship one; on ImageNet, CIFAR-10 and your own models `nip` passes inputs "
                "through unchanged until you build one with `python -m nip_core calibrate --model M --data PATH` "
                "(it never falls back to a mode that flips benign inputs). See docs/nip-research.md.")
    st.warning(label_free_note())

    st.subheader("Mediation: does it work through the neurons?")
    st.markdown("Counting how often front neurons go down under attack is a correlation: the top contributors to a "
                "logit that an attack lowers go down almost by construction. Mediation intervenes instead. It runs "
                "the adversarial $x'$ with a group $G$ of a layer's neurons set to their values on the benign $x$ "
                "(written $f_{G \\leftarrow x}(x')$) and measures how much of the true class's margin "
                "$m = z_y - \\max_{c \\ne y} z_c$ comes back:")
    st.latex(r"r = \frac{m\big(f_{G \leftarrow x}(x')\big) - m\big(f(x')\big)}{m\big(f(x)\big) - m\big(f(x')\big)}")
    st.markdown("$G$ is the true class's front, tail or front+tail group, a **random** group of the same size "
                "(the control), or the neurons the attack moved most (the upper reference). Put back the "
                "*defended* values instead, and the same ratio over images says how much of a defense's recovery "
                "those neurons carry. `python -m nip_core evaluate --mediation` measures it on a split; the "
                "Benchmark page shows the shipped runs, and docs/nip-research.md (Round 5) says what they show.")

    st.subheader("What each chart shows")
    st.markdown(
        "- **Influence heatmaps** (Explore): every neuron of the chosen layer as one cell of a near-square grid "
        "(neuron *j* at row *j ÷ cols*, column *j mod cols*), coloured by its influence toward the reference class "
        "(Captum conductance or gradient × activation, in logit units). Benign, adversarial and defended share one "
        "symmetric colour scale; grey cells are dead neurons. Hover shows index, value and group.\n"
        "- **Difference heatmaps**: adversarial − benign and defended − benign on one shared scale (red: higher "
        "than benign).\n"
        "- **Front / middle / tail chart**: mean activation of each group for the three inputs. The paper's "
        "signature is front down and tail up under attack, reversed by NIP; the verdict line under it says "
        "whether this image shows it.\n"
        "- **Perturbation**: the difference to the benign image, amplified to fill the colour scale, with its "
        "L∞ and L2 norms in [0,1] pixel units.\n"
        "- **Top-5 bars**: softmax confidence; green is the reference class.\n"
        "- **Drill-down**: one neuron's activation map over the three inputs (conv layers: the channel's map; "
        "fully connected layers: input-gradient magnitude of that neuron) and its profile influence per class.\n"
        "- **Compare at a glance** (on request): the same adversarial through each baseline, the random-sign "
        "control and the NIP modes.\n"
        "- **Neuron surgery** (on request): chosen neurons of one layer set to chosen values (benign, defended, "
        "zero, scaled, mean) in the adversarial pass; bars for benign, adversarial and patched, their margins and "
        "the recovery share (0: still adversarial, 1: the benign margin back). Neurons can be picked on the grid.\n"
        "- **Benchmark heatmap**: accuracy (or defense success rate) per attack × defense, with benign and "
        "adaptive rows; the shipped report runs show on arrival, any results JSON can be opened, and the table "
        "beside it gives each accuracy's Wilson interval (95 percent).\n"
        "- **Benchmark, image by image**: for `nip` against each other defense, the images only one of the two "
        "gets right and the exact McNemar p-value; a lead of a few images with a large p is a tie.")

    st.subheader("Honest limits")
    st.markdown(
        "- **Controls.** `random-sign` spends NIP's exact budget and steps in random directions. If NIP does not "
        "beat it, the direction is not what helps; input transformations (JPEG, bit depth, median, noise) are "
        "the other baselines.\n"
        "- **Adaptive attacks.** Preprocessing defenses are known to fall to attacks that see them. The benchmark's "
        "adaptive row attacks model ∘ defense with PGD and a straight-through (BPDA) gradient.\n"
        "- **Label-free NIP is hard.** The oracle knows the class; deployable modes must guess it, and a wrong "
        "guess pushes the input toward the wrong class's front neurons.\n"
        "- **EfficientNet profiles** come from five shipped photos (plus mirror images), not from ImageNet.")

    doc = REPO_ROOT / "docs" / "method.md"
    if doc.exists():
        with st.expander("Full method notes (docs/method.md)", expanded=False):
            st.markdown(doc.read_text(encoding="utf-8"))


main()
