"""Command line: ``python -m nip_core list|evaluate|explain|surgery|fragility|train|robustness|profile|calibrate|split-images|bench``.

Bad arguments or inputs exit with status 2 and one readable line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from nip_core import api


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


class _LazyBar:
    """A tqdm bar drawn on the first progress message, so an input refused before any work
    leaves exactly one line (the error) on stderr."""

    def __init__(self, desc: str, eta: bool = False) -> None:
        self.desc, self.bar, self.eta = desc, None, eta

    def update(self, frac: float, msg: str) -> None:
        if self.bar is None:
            from tqdm import tqdm
            clock = "{elapsed}<{remaining}" if self.eta else "{elapsed}"
            self.bar = tqdm(total=100, desc=self.desc, file=sys.stderr, leave=True,
                            bar_format="{l_bar}{bar}| {n:.0f}% [" + clock + "] {postfix}")
        self.bar.update(round(100 * frac) - self.bar.n)   # update(), not n=…, so tqdm's rate (ETA) follows
        self.bar.set_postfix_str(msg[:60])
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(desc: str):
    bar = _LazyBar(desc)
    return bar, bar.update


def _params(text: str | None) -> dict[str, str]:
    from nip_core.params import parse_kv
    return parse_kv(text) if text else {}


def cmd_list(args) -> int:
    items = api.catalogue(args.what)
    if args.json:
        print(json.dumps(items, indent=2, default=str))
    else:
        for it in items:
            print(f"{it['name']:20s} {it['summary']}")
    return 0


def cmd_evaluate(args) -> int:
    model = _model_arg(args, required=False)
    if args.suite and args.blackbox_eps is None and not args.no_blackbox:
        args.blackbox_eps = api.suite_blackbox_eps(args.suite)
    bar = _LazyBar(f"evaluate {model or args.suite}", eta=True)
    try:
        result = api.run_evaluation(model, args.attacks, args.defenses, args.n, suite=args.suite, seed=args.seed,
                                    split=args.split, adaptive=not args.no_adaptive, data=args.data,
                                    data_seed=args.data_seed, blackbox=_blackbox(args), mediation=_mediation(args),
                                    eps_grid=args.eps_grid, images_of=args.images_of, ray=args.ray,
                                    workers=args.workers, threads=args.threads, shard_size=args.shard_size,
                                    cache=None if args.no_cache else (args.cache or _default_shard_cache()),
                                    fresh=args.fresh, model_source=_model_source(args), progress=bar.update)
    finally:
        bar.close()
    paths = api.write_evaluation(result, args.out)
    _print_summary(result)
    if result["data"].get("source") != "heldout":
        print(f"data: {result['data']['summary']}", file=sys.stderr)
    for d, note in result.get("calibration", {}).items():
        if not note.get("calibrated", True):
            print(f"note: {note['note']}", file=sys.stderr)
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return 0


def _model_arg(args, *, required: bool = True) -> str | None:
    """``--model``, or your own model (``--arch/--weights/--classes``) registered and named."""
    from nip_core.byom import resolve_model
    return resolve_model(args, required=required)


def _blackbox(args) -> dict[str, Any] | None:
    if args.no_blackbox or args.blackbox_eps is None or args.no_adaptive:
        return None
    return {"eps": args.blackbox_eps, "max_iter": args.blackbox_queries, "n": args.blackbox_n}


def _mediation(args) -> list[str] | None:
    if args.mediation_layers and not args.mediation:
        raise _input_error("--mediation-layers needs --mediation.")
    if not args.mediation:
        return None
    return [s.strip() for s in (args.mediation_layers or "").split(",") if s.strip()]


def _default_shard_cache() -> str:
    from nip_core.runtime import cache_dir
    return str(cache_dir() / "shards")


def _model_source(args) -> dict[str, Any] | None:
    """A user's model as Ray workers must load it (absolute paths; they must exist on every node)."""
    if getattr(args, "weights", None) is None:
        return None
    return {"arch": args.arch, "weights": str(Path(args.weights).resolve()),
            "class_names": str(Path(args.classes).resolve()), "input_size": args.input_size}


def _print_summary(result: dict) -> None:
    s = result["summary"]
    aware, bbox = s.get("adaptive_aware_accuracy", {}), s.get("blackbox_accuracy", {})

    def cell(v, w: int) -> str:
        return f"{'n/a' if v is None else f'{v:.3f}':>{w}s}"

    print(f"{'defense':40s} {'mean adv acc':>12s} {'benign acc':>10s} {'adaptive':>9s} {'aware':>6s} {'black-box':>9s}")
    for d in result["defenses"]:
        print(f"{d[:40]:40s} {s['mean_adv_accuracy'][d]:12.3f} {s['benign_accuracy'][d]:10.3f} "
              f"{cell(s['adaptive_accuracy'].get(d), 9)} {cell(aware.get(d), 6)} {cell(bbox.get(d), 9)}")
    paired = s.get("paired")
    if paired:
        deployable = {r["defense"] for r in result["rows"] if r["deployable"]} - {paired["defense"]}
        name = paired["defense"].split("[")[0]
        print(f"\n{name} against its closest deployable rival, image by image (exact McNemar p):")
        for attack, cmp in paired["attacks"].items():
            rival = min((d for d in cmp if d in deployable),
                        key=lambda d: cmp[d]["only_this"] - cmp[d]["only_other"], default=None)
            if rival is not None:
                c = cmp[rival]
                print(f"  {attack[:30]:30s} vs {rival.split('[')[0]:12s} only {name}: {c['only_this']:3d}  "
                      f"only {rival.split('[')[0]}: {c['only_other']:3d}  p = {c['p_value']:.3g}")


def cmd_explain(args) -> int:
    import numpy as np

    model = api.load(_model_arg(args))
    img = api.load_image(args.image, model)
    bar, update = _progress_bar("explain")
    try:
        e = api.explain_image(model, img, args.label, attack=args.attack, attack_params=_params(args.attack_params),
                              defense=args.defense, defense_params=_params(args.defense_params), layer=args.layer,
                              method=args.method, k=args.k, seed=args.seed, progress=update)
    finally:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for v in e.images:
        (out / f"{v}.png").write_bytes(api.png_bytes(e.images[v]))
    np.savez(out / "influence.npz", **{f"influence_{v}": e.influence[v].numpy() for v in e.influence},
             **{f"activation_{v}": e.activations[v].numpy() for v in e.activations},
             front=e.front.numpy(), tail=e.tail.numpy(), dead=e.dead.numpy())
    for name, fig in api.explore_figures(e).items():
        fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
    summary = e.summary() | {"image": str(args.image), "seed": args.seed,
                             "files": sorted(p.name for p in out.iterdir())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    p = summary["predictions"]
    print(f"benign: {p['benign']['name']}  adversarial: {p['adversarial']['name']}  "
          f"defended ({args.defense}): {p['defended']['name']}  → {out}/summary.json")
    return 0


def cmd_surgery(args) -> int:
    result = api.run_surgery(_model_arg(args), args.image, args.label, attack=args.attack, defense=args.defense,
                             layer=args.layer, select=args.select, value=args.value, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    data["settings"]["image"] = str(args.image)
    (out / "surgery.json").write_text(json.dumps(data, indent=2) + "\n")
    api.surgery_figure(result).write_html(out / "surgery.html", include_plotlyjs=True)
    names = [data[v]["prediction_names"][0] for v in ("benign", "adversarial", "patched")]
    r = result.recovery(0)
    print(f"benign: {names[0]}  adversarial: {names[1]}  patched: {names[2]}  recovery share: "
          f"{'n/a' if r is None else f'{r:.3f}'}  → {out}/surgery.json")
    return 0


def cmd_fragility(args) -> int:
    if args.distribution:
        for opt in ("image", "label"):
            if getattr(args, opt) is not None:
                raise _input_error(f"--distribution measures the model's {args.split} split; drop --{opt}.")
    else:
        if args.image is None:
            raise _input_error("fragility needs --image (or --distribution for the report split's distribution).")
        for opt in ("split", "n"):
            if getattr(args, opt) is not None:
                raise _input_error(f"--{opt} only applies with --distribution.")
    model = api.load(_model_arg(args))
    bar = _LazyBar("fragility", eta=args.distribution)
    if args.distribution:
        try:
            dist = api.run_fragility_distribution(model, split=args.split or "report", n=args.n, attack=args.attack,
                                                  attack_params=_params(args.attack_params), defenses=args.defenses,
                                                  seed=args.seed, progress=bar.update)
        finally:
            bar.close()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dist, indent=2) + "\n")
        for d, cell in dist["defenses"].items():
            flips = sorted(v for v in cell["flip_eps"] if v is not None)
            med = f"{flips[len(flips) // 2]:.4f}" if flips else "n/a"
            print(f"{d:30s} flipped {len(flips)}/{dist['n_images']}  median flip ε among them {med}")
        print(f"wrote {out}", file=sys.stderr)
        return 0
    img = api.load_image(args.image, model)
    try:
        frag = api.run_fragility(model, img, args.label, attack=args.attack, attack_params=_params(args.attack_params),
                                 defenses=args.defenses, seed=args.seed, progress=bar.update)
    finally:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = frag.result | {"image": str(args.image)}
    (out / "fragility.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "fragility.html").write_text(api.fragility_report(frag, {"image": str(args.image)}), encoding="utf-8")
    if r["status"] == "misclassified":
        print(r["message"])
    note = r.get("distribution", {}).get("note", "")
    for d, c in r["defenses"].items():
        eps = "none up to the maximum" if c["flip_eps"] is None else f"{c['flip_eps']:.4f} ({c['flip_eps_255']:g}/255)"
        pct = (f"percentile {c['percentile']:.0f}" if c.get("percentile") is not None
               else "" if c.get("percentile_note") == note else c.get("percentile_note", ""))
        print(f"{d:30s} flip ε {eps:28s} {c['status']:22s} {pct}".rstrip())
    if note:
        print(f"percentiles: {note}")
    print(f"wrote {out}/fragility.json and {out}/fragility.html", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    info = api.train_model(args.model, seed=args.seed, epochs=args.epochs, out=args.out, ship=args.ship)
    print(json.dumps(info, indent=2))
    return 0


def cmd_robustness(args) -> int:
    model = api.load(args.model)
    if args.out is None and not args.write_card:
        raise _input_error("give --out FILE.json for the figures, or --write-card to store them in the model's card.")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise _input_error(f"--out {args.out!r} is a folder; give a JSON file path.")
        out.parent.mkdir(parents=True, exist_ok=True)
    bar = _LazyBar(f"robustness {model.name}", eta=True)
    try:
        result, command, card = api.run_robustness(model, pgd_n=args.pgd_n, autoattack_n=args.autoattack_n,
                                                   seed=args.seed, write_card=args.write_card, progress=bar.update)
    finally:
        bar.close()
    if out is not None:
        out.write_text(json.dumps(result | {"command": command}, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    if card is not None:
        print(f"wrote the robustness block of {card}", file=sys.stderr)
    for what in ("clean", "pgd", "autoattack"):
        if what in result:
            r = result[what]
            print(f"{what:10s} {r['accuracy']:.4f}  ({r['correct']}/{r['n']}, 95% CI {r['ci95'][0]:.4f}–"
                  f"{r['ci95'][1]:.4f})  {r.get('attack', '')}")
    return 0


def cmd_profile(args) -> int:
    model = api.load(args.model)
    data = None
    if args.data:
        if args.ship:
            raise _input_error("--ship writes the shipped profiles of the model's own data; drop it with --data.")
        data = api.labelled_data(model, args.data, args.split, args.seed)
        print(data[0].summary_line(), file=sys.stderr)
    for prof, path in api.compute_profiles(model, args.layer, method=args.method, n_steps=args.n_steps, data=data,
                                           split=args.split, seed=args.seed, fresh=args.fresh, ship=args.ship,
                                           out=args.out):
        where = f" → {path}" if path else ""
        print(f"{model.name} {prof.layer} {args.method}: {prof.n_neurons} neurons, {int(prof.dead.sum())} dead, "
              f"{len(prof.per_class)} class profiles" + (f" from {args.data} ({args.split})" if data else "") + where)
    return 0


def cmd_calibrate(args) -> int:
    model = api.load(_model_arg(args))
    if args.forget:
        api.forget_calibration(model)
        print(f"{model.name}: back to its built-in calibration (if any)", file=sys.stderr)
        return 0
    cal, path, data = api.calibrate_model(model, args.data, seed=args.seed, ship=args.ship, return_path=True)
    if data is not None:
        print(data.summary_line(), file=sys.stderr)
    info = cal.to_json() | {"path": str(path)}
    if data is not None:
        info["skipped"] = data.skipped
    print(json.dumps(info, indent=2, default=str))
    print(f"calibrated nip for {model.name}: {info['bank_images']} bank images in {info['classes_in_bank']} classes, "
          f"{info['calib_images']} calibration images → {path}", file=sys.stderr)
    return 0


def cmd_split_images(args) -> int:
    names = [m.strip() for m in args.model.split(",") if m.strip()]
    for name, out in zip(names, api.write_split_images(names, args.split, args.out)):
        print(f"{name}: {args.split} split → {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


def cmd_bench(args) -> int:
    models = None if args.models is None else [m.strip() for m in args.models.split(",")]
    result = api.run_bench(args.out, quick=args.quick, models=models)
    print(json.dumps(result.get("summary", {}), indent=2))
    return 0


def _input_error(msg: str):
    from nip_core.errors import InputError
    return InputError(msg)


def _model_arguments(s: argparse.ArgumentParser, image_required: bool | None = None,
                     label_help: str = "true class, if known (else the benign prediction is the reference)") -> None:
    """``--model`` or your own model's flags; with ``image_required`` given, ``--image`` and ``--label`` too."""
    from nip_core.byom import add_byom_arguments

    s.add_argument("--model", help="a registered model, or bring your own with --arch/--weights/--classes")
    add_byom_arguments(s)
    if image_required is not None:
        s.add_argument("--image", required=image_required, help=None if image_required else "the image (PNG, JPEG, …)")
        s.add_argument("--label", type=int, help=label_help)


def build_parser() -> argparse.ArgumentParser:
    from nip_core.byom import add_byom_arguments

    p = _Parser(prog="python -m nip_core", description="NIP Explorer engine: neuron influence, attacks and NIP.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="list models, attacks or defenses")
    s.add_argument("what", choices=["models", "attacks", "defenses"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("evaluate", help="model × attacks × defenses on held-out images")
    s.add_argument("--model")
    add_byom_arguments(s)
    s.add_argument("--attacks", help="e.g. fgsm[eps=0.1],pgd,cw-l2")
    s.add_argument("--defenses", help="e.g. none,jpeg,nip,nip-oracle,random-sign")
    s.add_argument("--suite", help="a fixed suite: paper-mnist, paper-fashion, paper-cifar10 or paper-imagenet")
    s.add_argument("--split", default="all", choices=["all", "tune", "report"])
    s.add_argument("--n", type=int, help="number of images (default 100, or the whole split for --suite)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-adaptive", action="store_true", help="skip the adaptive columns (BPDA, aware, black-box)")
    s.add_argument("--data", help="evaluate on your own labelled images (an ImageFolder, a .zip of one, or an .npz "
                                  "with x and y; docs/data.md) instead of the model's held-out set")
    s.add_argument("--data-seed", type=int, default=0, dest="data_seed", help="seed of the --data split")
    s.add_argument("--images-of", dest="images_of", metavar="MODEL",
                   help="run on another model's split images (same dataset, e.g. --model lenet-fashion-at --images-of "
                        "lenet-fashion), counting an image this model gets wrong when clean as wrong")
    s.add_argument("--blackbox-eps", type=float, dest="blackbox_eps",
                   help="add the black-box column: Square attack (L∞ eps) through model ∘ defense (suites: on)")
    s.add_argument("--blackbox-queries", type=int, default=1000, dest="blackbox_queries")
    s.add_argument("--blackbox-n", type=int, default=100, dest="blackbox_n", help="images the black-box column attacks")
    s.add_argument("--no-blackbox", action="store_true", dest="no_blackbox")
    s.add_argument("--mediation", action="store_true",
                   help="patch each successful adversarial's neurons with benign and defended values at every "
                        "hookable layer (docs/method.md, Mediation)")
    s.add_argument("--mediation-layers", dest="mediation_layers",
                   help="comma-separated layers for --mediation (default: every hookable layer)")
    s.add_argument("--eps-grid", dest="eps_grid", metavar="EPS,EPS,...",
                   help="run every L∞ gradient attack (fgsm, bim, pgd, mifgsm, apgd) at each of these strengths in "
                        "(0, 1], its step scaled with ε, and add accuracy against ε to the JSON (elasticity; "
                        "docs/elasticity.md); the adaptive columns keep the main ε")
    s.add_argument("--out", required=True, help="JSON path; a CSV is written beside it")
    g = s.add_argument_group("shards, cache and Ray (docs/cluster.md)")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="run shards on Ray: 'local' starts Ray on this machine, else a cluster address (HOST:PORT, auto)")
    g.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else one per --threads CPUs)")
    g.add_argument("--threads", type=int, help="torch threads per worker (default: CPUs / workers)")
    g.add_argument("--shard-size", type=int, dest="shard_size", help="images per shard (default 64)")
    g.add_argument("--cache", help="folder of finished shards (default: <cache dir>/shards); re-runs compute only "
                                   "missing shards")
    g.add_argument("--no-cache", action="store_true", dest="no_cache", help="neither read nor write finished shards")
    g.add_argument("--fresh", action="store_true", help="recompute every shard (and overwrite the cache)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("explain", help="one image: predictions, influence and figures")
    _model_arguments(s, image_required=True, label_help="true class, if known")
    s.add_argument("--attack", default="fgsm")
    s.add_argument("--attack-params", help="e.g. eps=0.1")
    s.add_argument("--defense", default="nip")
    s.add_argument("--defense-params", help="e.g. budget=0.3,steps=20")
    s.add_argument("--layer")
    s.add_argument("--method", default="conductance", choices=["conductance", "grad_x_act"])
    s.add_argument("--k", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_explain)

    s = sub.add_parser("surgery", help="one image: set chosen neurons of a layer and re-run the prediction")
    _model_arguments(s, image_required=True)
    s.add_argument("--attack", default="fgsm", help='one attack, e.g. "pgd[eps=0.1;max_iter=20]"')
    s.add_argument("--defense", help='a defense whose input the value "defended" copies, e.g. "nip[steps=10]"')
    s.add_argument("--layer", help="an influence layer of the model (default: its default layer)")
    s.add_argument("--select", default="front:0.2",
                   help="front:K, tail:K, front+tail:K, changed:N, random:N, none, or indices such as 3,17,42")
    s.add_argument("--value", default="benign", help="benign, defended, zero, scale:A (A in [-10, 10]) or mean")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="folder for surgery.json and surgery.html")
    s.set_defaults(fn=cmd_surgery)

    s = sub.add_parser("fragility", help="one image: the smallest attack budget that flips each defense "
                                         "(docs/elasticity.md)")
    _model_arguments(s, image_required=False)
    s.add_argument("--attack", default="pgd", help="an L∞ gradient attack: fgsm, bim, pgd, mifgsm or apgd")
    s.add_argument("--attack-params", dest="attack_params",
                   help="e.g. max_iter=10; their eps_step/eps is kept at every budget tried")
    s.add_argument("--defenses", help="e.g. none,jpeg,nip (default; --distribution: none,jpeg)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--distribution", action="store_true",
                   help="instead of one image: the flip ε of every image of the model's report split "
                        "(--out is then a JSON file, e.g. docs/results/fragility-<model>.json)")
    s.add_argument("--split", choices=["tune", "report", "calib", "all"], help="with --distribution (default report)")
    s.add_argument("--n", type=int, help="with --distribution: only the first n images of the split")
    s.add_argument("--out", required=True, help="a folder for fragility.json and fragility.html (--distribution: a "
                                                "JSON file)")
    s.set_defaults(fn=cmd_fragility)

    s = sub.add_parser("train", help="retrain a shipped model reproducibly")
    s.add_argument("model", help="lenet-mnist, lenet-fashion or lenet-fashion-at (PGD adversarial training)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=int, help="default: 40 for lenet-mnist, 15 for lenet-fashion, 20 for "
                                              "lenet-fashion-at")
    s.add_argument("--out", help="folder for <model>.safetensors and its <model>.json card")
    s.add_argument("--ship", action="store_true", help="write to the shipped assets/models instead (overwrites them)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("robustness", help="a model card's robust figures: clean, PGD-20 and AutoAttack accuracy on "
                                          "the official test set, counted unconditionally")
    s.add_argument("--model", required=True, help="a Fashion-MNIST or MNIST model, e.g. lenet-fashion-at")
    s.add_argument("--pgd-n", type=int, default=10_000, dest="pgd_n",
                   help="PGD-20 (ε 0.1, step 0.01, random start) on the first N test images (default 10,000)")
    s.add_argument("--autoattack-n", type=int, default=1_000, dest="autoattack_n",
                   help="AutoAttack (ε 0.1, 5 restarts, 5,000 Square queries) on the first N (default 1,000; 0: skip)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="JSON file for the figures")
    s.add_argument("--write-card", action="store_true", dest="write_card",
                   help="store the figures, with this command, in the model's card (assets/models/<model>.json)")
    s.set_defaults(fn=cmd_robustness)

    s = sub.add_parser("profile", help="compute (and optionally ship) influence profiles")
    s.add_argument("--model", required=True)
    s.add_argument("--layer", help="a layer name or 'all'")
    s.add_argument("--method", default="conductance", choices=["conductance", "grad_x_act"])
    s.add_argument("--n-steps", type=int, default=16)
    s.add_argument("--ship", action="store_true", help="write into assets/profiles")
    s.add_argument("--out", help="also write each profile into this folder (safetensors, named as in assets/profiles)")
    s.add_argument("--fresh", action="store_true",
                   help="compute from the images: neither read nor write cached or shipped profiles")
    s.add_argument("--data", help="profile your own labelled images: an ImageFolder, a .zip of one, or an .npz")
    s.add_argument("--split", default="all", choices=["all", "tune", "report", "calib"],
                   help="with --data: which seeded split of the data (docs/data.md)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_profile)

    s = sub.add_parser("calibrate", help="build the benign bank the label-free nip needs (cached on disk)")
    _model_arguments(s)
    s.add_argument("--data", help="labelled benign images in the model's classes: an ImageFolder, a .zip of one, "
                                  "or an .npz with x and y (default: the model's own training data)")
    s.add_argument("--seed", type=int, default=0, help="seed of the data's split (its calib part is used)")
    s.add_argument("--ship", action="store_true", help="write the built-in calibration into assets/calibration")
    s.add_argument("--forget", action="store_true", help="drop the user calibration of this model")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("split-images", help="write a split's images as a uint8 .npz (the shipped assets/splits "
                                            "files Explore opens as report:<index>)")
    s.add_argument("--model", required=True, help="a model, or several separated by commas")
    s.add_argument("--split", default="report", choices=["tune", "report", "calib", "all"])
    s.add_argument("--out", help="the .npz path (default: assets/splits/<model>-<split>.npz, the shipped file)")
    s.set_defaults(fn=cmd_split_images)

    s = sub.add_parser("bench", help="performance against the compute floor")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--models", help="comma-separated model names (default: every registered model)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from nip_core.errors import InputError

    warnings.filterwarnings("ignore")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not the user's fault: still one line unless debugging
        if os.environ.get("NIP_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: internal error {type(e).__name__}: {first} (set NIP_DEBUG=1 for details)", file=sys.stderr)
        return 1
