"""Sessions sharing one cached model from several threads get exactly their one-by-one results."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import save

from nip_core.analyses.explain import explain
from nip_core.influence import influence_profile, neuron_activations, neuron_influence

# Eight different Explore runs: images, attacks, defenses, layers, methods and k all differ.
CASES = [
    dict(i=0, attack="fgsm", attack_params={"eps": 0.2}, defense="nip", layer="fc1", k=0.2),
    dict(i=1, attack="pgd", attack_params={"max_iter": 10, "eps_step": 0.05}, defense="nip-global", layer="fc2",
         k=0.1, method="grad_x_act"),
    dict(i=2, attack="deepfool", attack_params={"max_iter": 10}, defense="jpeg", layer="conv2", k=0.3,
         method="grad_x_act"),
    dict(i=3, attack="bim", attack_params={"max_iter": 5}, defense="random-sign", layer="fc1", k=0.25),
    dict(i=4, attack="mifgsm", attack_params={"max_iter": 5}, defense="gaussian", layer="conv1", k=0.5,
         method="grad_x_act"),
    dict(i=5, attack="apgd", attack_params={"max_iter": 5}, defense="nip", defense_params={"steps": 10}, layer="fc1",
         k=0.15, seed=7),
    dict(i=6, attack="square", attack_params={"max_iter": 30}, defense="median", layer="fc2", k=0.2,
         method="grad_x_act"),
    dict(i=7, attack="pgd", attack_params={"max_iter": 5, "eps_step": 0.05}, defense="bitdepth", layer="fc1", k=0.4,
         seed=3),
]
TENSOR_FIELDS = ("images", "logits", "influence", "activations")


def _run(model, digits, case):
    x, y = digits
    kw = {k: v for k, v in case.items() if k != "i"}
    return explain(model, x[case["i"]], int(y[case["i"]]), n_steps=8, **kw)


def assert_same_explanation(a, b):
    for name in TENSOR_FIELDS:
        for v in ("benign", "adversarial", "defended"):
            assert torch.equal(getattr(a, name)[v], getattr(b, name)[v]), f"{name}[{v}] differs"
    for name in ("front", "middle", "tail", "dead"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.reference_class, a.attack_params, a.defense_params) == (b.reference_class, b.attack_params,
                                                                      b.defense_params)


def _in_threads(fns, timeout=600):
    """Run each callable in its own thread, all released at once; returns their results."""
    barrier = threading.Barrier(len(fns))

    def go(fn):
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(len(fns)) as pool:
        futures = [pool.submit(go, fn) for fn in fns]
        return [f.result(timeout=timeout) for f in futures]


def test_eight_explain_sessions_in_threads_match_one_by_one(lenet, digits):
    # The one-by-one runs also compute (or read) every profile the threaded runs then share.
    alone = [_run(lenet, digits, c) for c in CASES]
    together = _in_threads([lambda c=c: _run(lenet, digits, c) for c in CASES])
    for c, a, b in zip(CASES, alone, together):
        try:
            assert_same_explanation(a, b)
        except AssertionError as exc:
            raise AssertionError(f"case {c}: {exc}") from None
    # Every replica the sessions used is back, with no hook left on it (a replica with one is retired).
    assert lenet._replicas == len(lenet._free) and all(r.clean() for r in lenet._free)
    assert not any(m._forward_hooks for m in lenet.shared_net.modules())


def test_plain_logits_thread_alongside_captum_threads(lenet, digits):
    x, y = digits
    want_logits = lenet.logits(x)
    want_cond = neuron_influence(lenet, x[:4], y[:4], "fc1", "conductance", 8)
    want_gxa = neuron_influence(lenet, x, y, "conv2", "grad_x_act")
    want_act = neuron_activations(lenet, x, "fc2")

    def logits_loop():
        return all(torch.equal(lenet.logits(x), want_logits) for _ in range(60))

    def captum_loop(kind):
        for _ in range(8):
            if kind == "cond":
                ok = torch.equal(neuron_influence(lenet, x[:4], y[:4], "fc1", "conductance", 8), want_cond)
            elif kind == "gxa":
                ok = torch.equal(neuron_influence(lenet, x, y, "conv2", "grad_x_act"), want_gxa)
            else:
                ok = torch.equal(neuron_activations(lenet, x, "fc2"), want_act)
            if not ok:
                return False
        return True

    results = _in_threads([logits_loop, logits_loop, lambda: captum_loop("cond"), lambda: captum_loop("gxa"),
                           lambda: captum_loop("act")])
    assert all(results), results


@pytest.fixture(scope="module")
def lenet_rgb_1000():
    """A user's RGB LeNet with 1000 classes: photo gallery, per-class profiles filled on demand."""
    from nip_core.byom import load_custom_model
    from nip_core.models.lenet import LeNet5

    torch.manual_seed(11)
    net = LeNet5(num_classes=1000, in_channels=3)
    return load_custom_model("lenet", save(net.state_dict()), [f"class {i}" for i in range(1000)])


class _ObservedLock:
    """Wraps the profile's lock: records whether thread ``watch`` found it free or held by another
    thread (a non-blocking try first, then the real, blocking acquire), and signals that moment."""

    def __init__(self, lock, watch: str) -> None:
        self.lock, self.watch = lock, watch
        self.found: str | None = None         # "free" or "held"
        self.reached = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.current_thread().name != self.watch or self.reached.is_set():
            return self.lock.acquire(blocking, timeout)
        got = self.lock.acquire(False)
        self.found = "free" if got else "held"
        self.reached.set()
        return got or self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()


def test_profile_filled_on_demand_does_not_deadlock_with_a_defense(lenet_rgb_1000):
    """Session A asks the profile for a new class outside the model lock (explain's groups) while
    session B, inside the model lock (a NIP defense), asks for another new class.

    Ordered by events, not sleeps: B takes the model lock, A reaches the profile's lock, and only then
    does B ask the profile. With one lock for both, A finds it held and waits for B; with two locks
    taken in opposite orders, A would hold the profile's and B would wait on it: a deadlock."""
    m = lenet_rgb_1000
    prof = influence_profile(m, "fc1", "grad_x_act", use_cache=False)
    assert prof._fill is not None
    prof._lock = observed = _ObservedLock(prof._lock, watch="a")
    b_has_lock = threading.Event()
    out = {}

    def session_a():
        if b_has_lock.wait(60):
            out["a"] = prof.class_scores(5)

    def session_b():
        with m.lock:
            b_has_lock.set()
            if observed.reached.wait(60):           # A is at the profile's lock
                out["b"] = prof.class_scores(6)

    threads = [threading.Thread(target=f, name=n, daemon=True) for f, n in ((session_a, "a"), (session_b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)     # a guard against hanging the suite, not a timing threshold
    assert not any(t.is_alive() for t in threads), "deadlock: profile lock and model lock taken in opposite orders"
    assert observed.found == "held"                 # A found the lock B holds, and waited for it
    assert out["a"].shape == out["b"].shape == (120,)
    assert 5 in prof.per_class and 6 in prof.per_class


def test_seeded_runs_on_two_models_in_threads_match_one_by_one(lenet, digits, lenet_rgb_1000):
    """Attacks and defenses seed process-wide RNGs; two models have two locks, so seeding and
    drawing must still not interleave across models."""
    from nip_core.attacks import run_attack
    from nip_core.defenses import apply_defense

    x, y = digits
    xr = x[:4].expand(-1, 3, -1, -1).contiguous()
    yr = lenet_rgb_1000.predict(xr)

    def a():
        return [run_attack(lenet, "pgd", x[:4], y[:4], {"max_iter": 3}, seed=s).x_adv for s in range(6)]

    def b():
        return [apply_defense(lenet_rgb_1000, "gaussian", xr, seed=s).x_def for s in range(6)] + \
               [run_attack(lenet_rgb_1000, "pgd", xr, yr, {"max_iter": 3}, seed=s).x_adv for s in range(6)]

    want = [a(), b()]
    for _ in range(2):
        got = _in_threads([a, b])
        for w, g in zip(want, got):
            assert all(torch.equal(p, q) for p, q in zip(w, g))


def test_art_imported_by_many_threads_at_once_is_whole():
    """ART imports itself circularly: without the engine's lock, two threads importing different parts
    of it (a session's attack and the app's warm-up) could see a half-initialised module. In a fresh
    interpreter, eight threads import it through the engine at once."""
    import subprocess
    import sys

    code = ("import threading; from nip_core.runtime import import_art\n"
            "errors = []\n"
            "def go(i):\n"
            "    try:\n"
            "        import_art()\n"
            "        from art.estimators.classification import PyTorchClassifier\n"
            "        from art.attacks.evasion import FastGradientMethod\n"
            "        from art.defences.preprocessor import JpegCompression\n"
            "    except Exception as e:\n"
            "        errors.append(repr(e))\n"
            "ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print('ERRORS', errors)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERRORS []" in out.stdout, out.stdout + out.stderr


# ----------------------------------------------------------------------------- runs computing at once (issue 28)

def _inside_together(*runs):
    """Each ``(model, fn)`` in its own thread; every thread first holds a lease of its model's
    replica and waits until all do, and only then computes: the computations overlap for certain.
    With one model-wide lock the second thread could never get in; the barrier's guard (not a timing
    threshold: it only bounds a hang) would then fail the test."""
    inside = threading.Barrier(len(runs), timeout=120)
    nets = [None] * len(runs)

    def go(i, model, fn):
        with model.lease() as net:
            nets[i] = net
            inside.wait()
            return fn()

    out = _in_threads([lambda i=i, m=m, f=f: go(i, m, f) for i, (m, f) in enumerate(runs)])
    return out, nets


def _explain_case(model, x, y, **kw):
    return lambda: explain(model, x, int(y), n_steps=8, **kw)


def test_two_runs_on_one_model_at_once_give_their_alone_bits(lenet, digits):
    """An attack that draws from NumPy's global RNG (PGD's random start) and a deterministic one
    (FGSM), each with the label-free nip, on two images with two seeds, computing at the same time
    on one model: each gives the bits it gives alone. Then two random attacks at once."""
    x, y = digits
    pairs = [
        (_explain_case(lenet, x[2], y[2], attack="pgd", attack_params={"max_iter": 5, "eps_step": 0.05},
                       defense="nip", layer="fc1", k=0.2, seed=11),
         _explain_case(lenet, x[3], y[3], attack="fgsm", attack_params={"eps": 0.25}, defense="nip",
                       layer="conv2", k=0.3, method="grad_x_act", seed=12)),
        (_explain_case(lenet, x[4], y[4], attack="apgd", attack_params={"max_iter": 5}, defense="gaussian", seed=13),
         _explain_case(lenet, x[5], y[5], attack="pgd", attack_params={"max_iter": 5, "eps_step": 0.05},
                       defense="nip-global", layer="fc2", seed=14)),
    ]
    for fa, fb in pairs:
        alone = [fa(), fb()]
        for _ in range(2):
            together, nets = _inside_together((lenet, fa), (lenet, fb))
            assert nets[0] is not nets[1] and lenet.shared_net not in nets   # two replicas, the shared net unhooked
            for a, b in zip(alone, together):
                assert_same_explanation(a, b)


def test_two_models_at_once_give_their_alone_bits(lenet, digits):
    """Attack + defense runs on two models in two threads at once (random and deterministic
    attacks on each) equal their one-by-one results."""
    from nip_core.attacks import run_attack
    from nip_core.defenses import apply_defense
    from nip_core.models import load_model

    fashion = load_model("lenet-fashion")
    x, y = digits
    yf = fashion.predict(x)

    def on(model, labels, attack, defense, seed):
        def run():
            adv = run_attack(model, attack, x[:4], labels[:4], {"max_iter": 5}, seed=seed).x_adv
            return adv, apply_defense(model, defense, adv, seed=seed).x_def
        return run

    for (a, b) in [((lenet, y, "pgd", "nip", 3), (fashion, yf, "bim", "nip", 4)),
                   ((lenet, y, "mifgsm", "median", 5), (fashion, yf, "square", "gaussian", 6))]:
        fa, fb = on(*a), on(*b)
        alone = [fa(), fb()]
        together, _ = _inside_together((a[0], fa), (b[0], fb))
        for w, g in zip(alone, together):
            assert all(torch.equal(p, q) for p, q in zip(w, g))


def test_plain_logits_need_no_lock(lenet, digits):
    """Another thread holds the model's lock and a lease of a replica with a hook on it that would
    zero every output: plain logits neither wait nor see the hook."""
    x, _ = digits
    want = lenet.logits(x)
    held, done = threading.Event(), threading.Event()

    def holder():
        with lenet.lock, lenet.lease():
            h = lenet.layer("fc2").register_forward_hook(lambda m, i, o: torch.zeros_like(o))
            try:
                held.set()
                done.wait(120)
            finally:
                h.remove()

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    try:
        assert held.wait(60)
        got = lenet.logits(x)
    finally:
        done.set()
        t.join(60)
    assert torch.equal(got, want)


def test_replicas_share_the_weights_and_are_reused(lenet):
    with lenet.lease() as net:
        with lenet.lease() as again:                      # re-entrant: the same replica
            assert again is net
        shared = dict(lenet.shared_net.named_parameters())
        assert all(p is shared[n] for n, p in net.named_parameters())   # no weights copied
        assert lenet.layer("fc1") is not lenet._layers["fc1"]          # the replica's own module
        assert lenet.local(lenet._layers["fc1"]) is lenet.layer("fc1")
    with lenet.lease() as later:
        assert later is net                               # given back, taken again
    assert lenet.layer("fc1") is lenet._layers["fc1"]     # outside a lease: the shared network's


# ----------------------------------------------------------------------------- which units draw from global RNGs

def _rng_states():
    import random
    import numpy as np
    st = np.random.get_state()
    return st[1].tobytes(), st[2], random.getstate()


def _small(unit, model):
    names = {q.name for q in unit.spec.params}
    p = {"max_iter": 5 if unit.name in ("square", "simba") else 2} if "max_iter" in names else {}
    return p


def test_units_that_draw_from_global_rngs_are_the_flagged_ones(lenet, digits, monkeypatch):
    """The claims that let runs compute without RNG_LOCK, checked on every registered unit:
    an attack or defense not flagged ``draws_global_rng`` leaves NumPy's and Python's global RNGs
    exactly as it found them (so it cannot move a concurrent run's stream), and no unit's result
    depends on torch's global RNG (which ART's data loaders draw from without a lock)."""
    import nip_core.runtime as runtime
    from nip_core.attacks import ATTACKS, run_attack
    from nip_core.defenses import DEFENSES, apply_defense

    x, y = digits[0][:2], digits[1][:2]
    real_seed = runtime.seed_everything
    torch_seed = {"v": 0}

    def seed_then_torch(seed):      # the run's own seeding, then another torch stream
        g = real_seed(seed)
        torch.manual_seed(torch_seed["v"])
        return g

    monkeypatch.setattr(runtime, "seed_everything", seed_then_torch)
    runs = [(f"attack {n}", a.draws_global_rng,
             lambda n=n, a=a: run_attack(lenet, n, x, y, _small(a, lenet), seed=1).x_adv)
            for n, a in ATTACKS.items() if a.applies_to(lenet)]
    runs += [(f"defense {n}", d.draws_global_rng,
              lambda n=n: apply_defense(lenet, n, x, y=y, seed=1, x_benign=x).x_def) for n, d in DEFENSES.items()]
    for label, flagged, run in runs:
        outs = []
        for t in (1, 2):
            torch_seed["v"] = t
            torch.manual_seed(t)
            before = _rng_states()
            outs.append(run())
            if not flagged:
                assert _rng_states() == before, f"{label} draws from a global RNG but is not flagged"
        assert torch.equal(*outs), f"{label}: the result depends on torch's global RNG"


# ----------------------------------------------------------------------------- slots and threads from the machine

@pytest.mark.parametrize("env, want", [
    ({}, (8, 1)),
    ({"NIP_RUN_SLOTS": "2"}, (2, 4)),
    ({"NIP_TORCH_THREADS": "2"}, (4, 2)),
    ({"NIP_RUN_SLOTS": "3", "NIP_TORCH_THREADS": "3"}, (3, 3)),
    ({"NIP_RUN_SLOTS": "16"}, (16, 1)),
    ({"NIP_RUN_SLOTS": " "}, (8, 1)),
])
def test_slots_and_threads_follow_the_cores_and_the_environment(monkeypatch, env, want):
    import nip_core.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_count", lambda: 8)
    for k in ("NIP_RUN_SLOTS", "NIP_TORCH_THREADS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert runtime.concurrency() == want


@pytest.mark.parametrize("bad", ["two", "0", "-3", "1.5"])
def test_a_bad_slot_or_thread_count_is_named_once_and_the_default_applies(monkeypatch, capsys, bad):
    import nip_core.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_count", lambda: 4)
    monkeypatch.setattr(runtime, "_WARNED", set())
    monkeypatch.setenv("NIP_RUN_SLOTS", bad)
    monkeypatch.setenv("NIP_TORCH_THREADS", "2")
    assert runtime.concurrency() == (2, 2)            # slots derived from the good thread count
    assert runtime.concurrency() == (2, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: NIP_RUN_SLOTS={bad!r} is not a whole number >= 1; ignored (the default from the "
                   "core count applies)"]


def test_the_run_queue_takes_its_slots_from_the_environment_and_runs_them_at_once(monkeypatch):
    from app.runqueue import RunQueue

    monkeypatch.setenv("NIP_RUN_SLOTS", "3")
    q = RunQueue()
    assert q.slots == 3
    inside = threading.Barrier(3, timeout=60)       # three turns held at once, or a broken barrier

    def run():
        with q.turn():
            inside.wait()
            return q.held()

    assert _in_threads([run, run, run]) == [True, True, True]


def test_a_routed_attack_gives_the_bits_it_gave_with_the_locked_global_stream(lenet, digits, monkeypatch):
    """PGD's random start is drawn from the run's own NumPy stream (only the draw holds RNG_LOCK):
    the same adversarials, bit for bit, as seeding the global RNG and drawing from it under the lock
    for the whole run (what every seeded attack did before)."""
    import nip_core.attacks as attacks
    from nip_core.runtime import global_rng

    x, y = digits
    seeds = (0, 7, 2**33 + 5)
    for name in ("pgd", "pgd-l2"):
        assert attacks.ATTACKS[name].routed_draws and not attacks.ATTACKS[name].draws_global_rng
        routed = [attacks.run_attack(lenet, name, x[:4], y[:4], {"max_iter": 3}, seed=s).x_adv for s in seeds]
        with monkeypatch.context() as m:
            m.setattr(attacks, "_rng", lambda attack, seed, net: global_rng(True, seed))
            locked = [attacks.run_attack(lenet, name, x[:4], y[:4], {"max_iter": 3}, seed=s).x_adv for s in seeds]
        assert all(torch.equal(a, b) for a, b in zip(routed, locked)), name
        assert not torch.equal(routed[0], routed[1])        # the seed matters: the start is random
