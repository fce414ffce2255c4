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
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.models import MODELS

    table: dict[str, list[dict[str, Any]]] = {
        "models": [s.to_json() for s in MODELS.values()],
        "attacks": [a.to_json() for a in ATTACKS.values()],
        "defenses": [d.to_json() for d in DEFENSES.values()],
    }
    items = table[args.what]
    if args.json:
        print(json.dumps(items, indent=2, default=str))
    else:
        for it in items:
            print(f"{it['name']:20s} {it['summary']}")
    return 0


def cmd_evaluate(args) -> int:
    from nip_core.attacks import ATTACKS
    from nip_core.defenses import DEFENSES
    from nip_core.elasticity import parse_eps_grid
    from nip_core.evaluate import SHARD_SIZE, SUITES, evaluate, parse_units, write_result
    from nip_core.models.base import get_spec
    from nip_core.byom import resolve_model

    args.model = resolve_model(args, required=False)
    if args.suite:
        if args.suite not in SUITES:
            raise _input_error(f"unknown suite {args.suite!r}; choose one of: {', '.join(SUITES)}.")
        suite = SUITES[args.suite]
        model = args.model or suite["model"]
        other = get_spec(model)
        if model != suite["model"] and (other.gallery != get_spec(suite["model"]).gallery
                                        or not getattr(other, "gallery_labels", True)):
            raise _input_error(f"suite {args.suite!r} is for {get_spec(suite['model']).gallery} models such as "
                               f"{suite['model']!r}, not {model!r}.")
        attacks, defenses = suite["attacks"], suite["defenses"]
        if args.attacks:
            attacks = parse_units(args.attacks, ATTACKS)
        if args.defenses:
            defenses = parse_units(args.defenses, DEFENSES)
        n = args.n if args.n is not None else 10_000
        if args.blackbox_eps is None and not args.no_blackbox:
            args.blackbox_eps = suite.get("blackbox_eps")
    else:
        if not (args.model and args.attacks and args.defenses):
            raise _input_error("evaluate needs --model, --attacks and --defenses (or --suite).")
        model, n = args.model, (args.n if args.n is not None else 100)
        get_spec(model)
        attacks, defenses = parse_units(args.attacks, ATTACKS), parse_units(args.defenses, DEFENSES)
    get_spec(model)
    eps_grid = None if args.eps_grid is None else parse_eps_grid(args.eps_grid)
    if args.ray is None and (args.workers is not None):
        raise _input_error("--workers needs --ray (local, or a cluster address).")
    bar = _LazyBar(f"evaluate {model}", eta=True)
    try:
        result = evaluate(model, attacks, defenses, n=n, seed=args.seed, split=args.split,
                          adaptive=not args.no_adaptive, progress=bar.update, ray_address=args.ray,
                          workers=args.workers, threads_per_worker=args.threads, shard_size=SHARD_SIZE if args.shard_size is None else args.shard_size,
                          cache=None if args.no_cache else (args.cache or _default_shard_cache()),
                          fresh=args.fresh, model_source=_model_source(args), data=args.data,
                          data_seed=args.data_seed, blackbox=_blackbox(args), mediation=_mediation(args),
                          eps_grid=eps_grid, images_of=args.images_of)
    finally:
        bar.close()
    if args.suite:
        result["suite"] = args.suite
    paths = write_result(result, args.out)
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
    from nip_core.explain import explain
    from nip_core.images import load_image_file, tensor_to_png_bytes
    from nip_core.models import load_model
    from nip_core.byom import resolve_model

    model = load_model(resolve_model(args))
    img = load_image_file(args.image, channels=model.spec.input_channels, size=model.spec.input_size,
                          preprocess=model.spec.preprocess)
    bar, update = _progress_bar("explain")
    try:
        e = explain(model, img, args.label, attack=args.attack, attack_params=_params(args.attack_params),
                    defense=args.defense, defense_params=_params(args.defense_params), layer=args.layer,
                    method=args.method, k=args.k, seed=args.seed, progress=update)
    finally:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np
    for v in e.images:
        (out / f"{v}.png").write_bytes(tensor_to_png_bytes(e.images[v]))
    np.savez(out / "influence.npz", **{f"influence_{v}": e.influence[v].numpy() for v in e.influence},
             **{f"activation_{v}": e.activations[v].numpy() for v in e.activations},
             front=e.front.numpy(), tail=e.tail.numpy(), dead=e.dead.numpy())
    for name, fig in e.figures().items():
        fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
    summary = e.summary() | {"image": str(args.image), "seed": args.seed,
                             "files": sorted(p.name for p in out.iterdir())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    p = summary["predictions"]
    print(f"benign: {p['benign']['name']}  adversarial: {p['adversarial']['name']}  "
          f"defended ({args.defense}): {p['defended']['name']}  → {out}/summary.json")
    return 0


def cmd_surgery(args) -> int:
    from nip_core import figures
    from nip_core.api import run_surgery
    from nip_core.byom import resolve_model

    result = run_surgery(resolve_model(args), args.image, args.label, attack=args.attack, defense=args.defense,
                         layer=args.layer, select=args.select, value=args.value, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    data["settings"]["image"] = str(args.image)
    (out / "surgery.json").write_text(json.dumps(data, indent=2) + "\n")
    figures.surgery_bars(result).write_html(out / "surgery.html", include_plotlyjs=True)
    names = [data[v]["prediction_names"][0] for v in ("benign", "adversarial", "patched")]
    r = result.recovery(0)
    print(f"benign: {names[0]}  adversarial: {names[1]}  patched: {names[2]}  recovery share: "
          f"{'n/a' if r is None else f'{r:.3f}'}  → {out}/surgery.json")
    return 0


def cmd_fragility(args) -> int:
    from nip_core.byom import resolve_model
    from nip_core.defenses import DEFENSES
    from nip_core.evaluate import parse_units
    from nip_core.fragility import (DEFAULT_DEFENSES, DISTRIBUTION_DEFENSES, fragility, fragility_distribution,
                                    fragility_report)
    from nip_core.images import load_image_file
    from nip_core.models import load_model

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
    model = load_model(resolve_model(args))
    defenses = (parse_units(args.defenses, DEFENSES) if args.defenses is not None else
                list(DISTRIBUTION_DEFENSES if args.distribution else DEFAULT_DEFENSES))
    bar = _LazyBar("fragility", eta=args.distribution)
    if args.distribution:
        try:
            dist = fragility_distribution(model, split=args.split or "report", n=args.n, attack=args.attack,
                                          attack_params=_params(args.attack_params), defenses=defenses,
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
    img = load_image_file(args.image, channels=model.spec.input_channels, size=model.spec.input_size,
                          preprocess=model.spec.preprocess)
    try:
        frag = fragility(model, img, args.label, attack=args.attack, attack_params=_params(args.attack_params),
                         defenses=defenses, seed=args.seed, progress=bar.update)
    finally:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = frag.result | {"image": str(args.image)}
    (out / "fragility.json").write_text(json.dumps(r, indent=2) + "\n")
    page = fragility_report(frag, {"image": str(args.image)})
    (out / "fragility.html").write_text(page, encoding="utf-8")
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
    from nip_core.train import train_lenet, train_lenet_fashion, train_lenet_fashion_at

    trainers = {"lenet-mnist": train_lenet, "lenet-fashion": train_lenet_fashion,
                "lenet-fashion-at": train_lenet_fashion_at}
    if args.model not in trainers:
        raise _input_error(f"only {', '.join(trainers)} can be trained here; got {args.model!r}.")
    if args.epochs is not None and args.epochs < 1:
        raise _input_error(f"--epochs must be at least 1; got {args.epochs}.")
    if args.out is None and not args.ship:
        raise _input_error("give --out DIR for the new weights and card, or --ship to overwrite the shipped "
                           f"{args.model} in assets/models.")
    kw: dict[str, Any] = {} if args.epochs is None else {"epochs": args.epochs}
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise _input_error(f"--out {args.out!r} is a file; give a folder for the weights and their card.")
        out.mkdir(parents=True, exist_ok=True)
        kw |= {"out": out / f"{args.model}.safetensors", "card": out / f"{args.model}.json"}
    info = trainers[args.model](seed=args.seed, **kw)
    print(json.dumps(info, indent=2))
    return 0


def cmd_robustness(args) -> int:
    from nip_core.models import load_model
    from nip_core.robustness import check_card, official_test_set, robust_accuracy, robustness_command, write_card

    model = load_model(args.model)
    official_test_set(model)            # a model without one is refused before any work
    if args.out is None and not args.write_card:
        raise _input_error("give --out FILE.json for the figures, or --write-card to store them in the model's card.")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise _input_error(f"--out {args.out!r} is a folder; give a JSON file path.")
        out.parent.mkdir(parents=True, exist_ok=True)
    if args.write_card:
        check_card(model)
    bar = _LazyBar(f"robustness {model.name}", eta=True)
    try:
        result = robust_accuracy(model, pgd_n=args.pgd_n, autoattack_n=args.autoattack_n, seed=args.seed,
                                 progress=bar.update)
    finally:
        bar.close()
    command = robustness_command(model.name, args.pgd_n, args.autoattack_n, args.seed)
    if out is not None:
        out.write_text(json.dumps(result | {"command": command}, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    if args.write_card:
        print(f"wrote the robustness block of {write_card(model, result, command)}", file=sys.stderr)
    for what in ("clean", "pgd", "autoattack"):
        if what in result:
            r = result[what]
            print(f"{what:10s} {r['accuracy']:.4f}  ({r['correct']}/{r['n']}, 95% CI {r['ci95'][0]:.4f}–"
                  f"{r['ci95'][1]:.4f})  {r.get('attack', '')}")
    return 0


def load_data_arg(path: str, model, split: str = "all", seed: int = 0):
    """``--data PATH`` read in the model's classes and geometry, cut to ``split``; prints one
    summary line (read / skipped) on stderr. Returns (LabelledData, x, y) of the split."""
    import torch

    from nip_core.sources.userdata import load_labelled_data, split_indices

    data = load_labelled_data(path, class_names=model.class_names, channels=model.spec.input_channels,
                              size=model.spec.input_size, preprocess=model.spec.preprocess)
    print(data.summary_line(), file=sys.stderr)
    idx = torch.from_numpy(split_indices(len(data.y), split, seed).copy())
    return data, data.x[idx], data.y[idx]


def cmd_profile(args) -> int:
    from nip_core.influence import gallery_candidate_classes, influence_profile, save_profile_to_assets, write_profile
    from nip_core.models import load_model

    model = load_model(args.model)
    layers = model.spec.layers if args.layer == "all" else [args.layer or model.spec.default_layer]
    for layer in layers:
        model.layer(layer)          # an unknown layer is refused before any work
    data = None
    if args.data:
        if args.ship:
            raise _input_error("--ship writes the shipped profiles of the model's own data; drop it with --data.")
        d, x, y = load_data_arg(args.data, model, args.split, args.seed)
        data = (x, y, f"{d.data_sha256}-{args.split}-{args.seed}")
    for layer in layers:
        prof = influence_profile(model, layer, args.method, args.n_steps, data=data, use_cache=not args.fresh)
        if args.ship:
            if prof._fill is not None:  # classes filled on demand (CIFAR-10, ImageNet): ship the gallery's
                prof.prefill(gallery_candidate_classes(model))   # as ship_profiles does
            save_profile_to_assets(prof, model)
        where = ""
        if args.out:
            where = f" → {write_profile(prof, model, args.out, data=data[2] if data else None)}"
        print(f"{model.name} {layer} {args.method}: {prof.n_neurons} neurons, {int(prof.dead.sum())} dead, "
              f"{len(prof.per_class)} class profiles" + (f" from {args.data} ({args.split})" if data else "") + where)
    return 0


def cmd_calibrate(args) -> int:
    from nip_core.byom import resolve_model
    from nip_core.calibration import calibrate, forget_user_calibration
    from nip_core.models import load_model

    model = load_model(resolve_model(args))
    if args.forget:
        forget_user_calibration(model)
        print(f"{model.name}: back to its built-in calibration (if any)", file=sys.stderr)
        return 0
    data = None
    if args.data:
        data, _, _ = load_data_arg(args.data, model)
    cal, path = calibrate(model, data, seed=args.seed, ship=args.ship)
    info = cal.to_json() | {"path": str(path)}
    if data is not None:
        info["skipped"] = data.skipped
    print(json.dumps(info, indent=2, default=str))
    print(f"calibrated nip for {model.name}: {info['bank_images']} bank images in {info['classes_in_bank']} classes, "
          f"{info['calib_images']} calibration images → {path}", file=sys.stderr)
    return 0


def cmd_split_images(args) -> int:
    from nip_core.models import load_model
    from nip_core.slices import split_asset_path, write_split_asset

    names = [m.strip() for m in args.model.split(",") if m.strip()]
    if args.out is not None and len(names) != 1:
        raise _input_error("--out takes one model; leave it out to write assets/splits/<model>-<split>.npz each.")
    for name in names:
        model = load_model(name)
        out = write_split_asset(model, args.split, args.out or split_asset_path(name, args.split))
        print(f"{name}: {args.split} split → {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


def cmd_bench(args) -> int:
    from nip_core.bench import run_bench
    from nip_core.models import MODELS

    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise _input_error("--models is empty; give model names separated by commas.")
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise _input_error(f"unknown model {unknown[0]!r}; choose one of: {', '.join(MODELS)}.")
    out = Path(args.out)
    if out.is_dir():
        raise _input_error(f"--out {args.out!r} is a folder; give a JSON file path.")
    out.parent.mkdir(parents=True, exist_ok=True)      # refuse an unwritable place before minutes of timing
    result = run_bench(quick=args.quick, out=out, models=models)
    print(json.dumps(result.get("summary", {}), indent=2))
    return 0


def _input_error(msg: str):
    from nip_core.errors import InputError
    return InputError(msg)


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
    s.add_argument("--model", help="a registered model, or bring your own with --arch/--weights/--classes")
    add_byom_arguments(s)
    s.add_argument("--image", required=True)
    s.add_argument("--label", type=int, help="true class, if known")
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
    s.add_argument("--model", help="a registered model, or bring your own with --arch/--weights/--classes")
    add_byom_arguments(s)
    s.add_argument("--image", required=True)
    s.add_argument("--label", type=int, help="true class, if known (else the benign prediction is the reference)")
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
    s.add_argument("--model", help="a registered model, or bring your own with --arch/--weights/--classes")
    add_byom_arguments(s)
    s.add_argument("--image", help="the image (PNG, JPEG, …)")
    s.add_argument("--label", type=int, help="true class, if known (else the benign prediction is the reference)")
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
    s.add_argument("--model", help="a registered model, or bring your own with --arch/--weights/--classes")
    add_byom_arguments(s)
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
