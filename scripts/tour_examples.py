"""Pick the guided tour's slow example images once and ship them in ``assets/tour.json``.

Most tour steps use an image chosen at run time (``nip_core.analyses.explain.demo_image`` with FGSM, cheap):
the same image for every such step, so the ``counter-attack`` ablation and the neuron surgery step
show the image of the ``nip`` step.
The step "an attack that knows the defense beats it" needs an image on which ``nip-aware`` beats
``nip``; finding one runs the defense-aware attack image after image (tens of seconds each on a
2-core CPU), so it is done here and the app reads the result (keyed by the model's weights hash; a
retrained model falls back to the run-time choice).

Usage:  python scripts/tour_examples.py [--models lenet-mnist,lenet-fashion]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nip_core.runtime import ASSETS  # noqa: E402

OUT = ASSETS / "tour.json"


def main() -> None:
    from nip_core.attacks import ATTACKS
    from nip_core.byom import is_custom
    from nip_core.calibration import calibration_for
    from nip_core.analyses.explain import demo_image
    from nip_core.models import MODELS, load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(m for m in MODELS if not is_custom(m)))
    args = ap.parse_args()
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in args.models.split(","):
        model = load_model(name)
        if not ATTACKS["nip-aware"].applies_to(model) or calibration_for(model) is None:
            print(f"{name}: nip-aware does not apply (no calibration); skipped")
            continue
        t0 = time.perf_counter()
        key = demo_image(model, attack="nip-aware", restore=(), defeat=("nip",))
        out[name] = {"weights_sha256": model.weights_sha256, "aware": key}
        print(f"{name}: aware step image {key} ({time.perf_counter() - t0:.0f} s)", flush=True)
    OUT.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
