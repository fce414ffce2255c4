"""The bench's JSON schema on a tiny, untimed configuration, and the fast conductance path."""
import json
import math

import torch

from nip_core.evaluation.bench import run_bench


def test_tiny_bench_writes_the_schema(tmp_path):
    out = tmp_path / "bench.json"
    r = run_bench(quick=True, tiny=True, models=["lenet-mnist"], attacks=["fgsm"], defenses=["jpeg"],
                  evaluation=False, out=out)
    assert json.loads(out.read_text())["summary"] == json.loads(json.dumps(r["summary"]))
    m = r["machine"]
    assert m["cpu_count"] >= 1 and m["torch_threads"] >= 1 and set(m["versions"]) == {"torch", "captum", "art", "numpy"}
    b = r["models"]["lenet-mnist"]["batch_2"]
    for key in ("forward_per_image", "forward_backward_per_image", "nip_floor_ratio", "nip_layer_floor_ratio",
                "conductance_floor_ratio"):
        assert math.isfinite(b[key]) and b[key] > 0, key
    assert {"nip-global", "nip-oracle"} <= set(b["nip"])
    for mode in b["nip"].values():
        assert mode["nip_floor_ratio"] > 0 and mode["T"] == 1 and mode["K"] >= 1
    assert b["conductance"]["conductance_fwd_ratio"] > 0 and b["peak_rss_mb"] > 0
    assert r["models"]["lenet-mnist"]["attacks"]["fgsm"]["per_image"] > 0
    assert r["models"]["lenet-mnist"]["defenses"]["jpeg"]["per_image"] >= 0
    s = r["summary"]
    assert s["nip_floor_ratio"]["lenet-mnist"]["batch_2"] == b["nip_floor_ratio"]
    assert s["conductance_floor_ratio"]["lenet-mnist"]["batch_2"] == b["conductance_floor_ratio"]


def test_fast_conductance_matches_captum(lenet, digits):
    from captum.attr import LayerConductance

    from nip_core.influence import neuron_influence

    x, y = digits
    for layer in ("conv2", "fc1"):
        a = LayerConductance(lenet.net, lenet.layer(layer)).attribute(
            x, baselines=torch.zeros_like(x), target=y, n_steps=8, method="riemann_trapezoid")
        want = a.flatten(2).sum(2) if a.dim() > 2 else a
        assert torch.allclose(neuron_influence(lenet, x, y, layer, "conductance", n_steps=8), want, atol=1e-5)


def test_paired_times_one_call_against_every_floor(monkeypatch):
    import nip_core.evaluation.bench as B

    calls = {"op": 0, "full": 0, "layer": 0}

    def counter(name):
        def run():
            calls[name] += 1
        return run

    dev = torch.device("cpu")
    r = B._paired(counter("op"), {"full": (counter("full"), 2.0), "layer": (counter("layer"), 1.0)}, 3, dev)
    assert calls == {"op": 4, "full": 4, "layer": 4}           # warm-up + 3 repeats, floors interleaved
    assert set(r["ratio"]) == set(r["floor_seconds"]) == {"full", "layer"} and r["repeats"] == 3
    # a call slower than SLOW counts its first (warm-up) run as a measurement and is not re-run
    monkeypatch.setattr(B, "SLOW", -1.0)
    calls.update(op=0, full=0, layer=0)
    r = B._paired(counter("op"), {"full": (counter("full"), 2.0), "layer": (counter("layer"), 1.0)}, 1, dev)
    assert calls["op"] == 1 and r["repeats"] == 1 and r["seconds"] >= 0
