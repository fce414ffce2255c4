"""Every numeric parameter of every attack and defense refuses NaN, ±inf, out-of-range and
wrong-typed values with a message naming the parameter and its allowed range."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from nip_core.attacks import ATTACKS
from nip_core.defenses import DEFENSES
from nip_core.errors import InputError

UNITS = [(kind, unit) for kind, reg in (("attack", ATTACKS), ("defense", DEFENSES)) for unit in reg.values()]
NUMERIC = [pytest.param(u, p, id=f"{kind}:{u.name}:{p.name}")
           for kind, u in UNITS for p in u.spec.params if p.kind in ("int", "float")]
OTHER = [pytest.param(u, p, id=f"{kind}:{u.name}:{p.name}")
         for kind, u in UNITS for p in u.spec.params if p.kind in ("choice", "bool")]

NOT_FINITE = [float("nan"), float("inf"), float("-inf"), "nan", "NaN", "inf", "-Infinity", "1e999",
              np.float32("nan"), np.float64("inf"), torch.tensor(float("nan"))]
WRONG_TYPE = [None, "abc", "", "0.1.2", [0.1], {"v": 1}, (1,), True, False, 1 + 2j, object()]


def _refuses(unit, lenet, p, value):
    with pytest.raises(InputError) as err:
        unit.params_for(lenet, {p.name: value})
    msg = str(err.value)
    assert f"'{p.name}'" in msg and p.describe_range() in msg and "\n" not in msg, msg


def test_every_unit_has_validated_numeric_parameters():
    assert len(NUMERIC) >= 30
    for p in NUMERIC:
        unit, param = p.values
        assert param.low is not None and param.high is not None and param.low <= param.default <= param.high
        assert math.isfinite(param.low) and math.isfinite(param.high)


@pytest.mark.parametrize("unit, p", NUMERIC)
def test_numeric_parameter_refuses_bad_values(lenet, unit, p):
    for value in NOT_FINITE + WRONG_TYPE:
        _refuses(unit, lenet, p, value)
    span = max(1.0, p.high - p.low)
    for value in (p.low - span, p.high + span, str(p.high + span)):
        _refuses(unit, lenet, p, value)
    if p.kind == "int":
        _refuses(unit, lenet, p, p.low + 0.5)
        _refuses(unit, lenet, p, str(p.low + 0.5))
    # The bounds themselves are accepted, as numbers and as CLI strings.
    for value in (p.low, p.high, str(p.low), str(p.high)):
        if p.name == "target" and float(value) >= lenet.num_classes:
            continue  # a class index beyond the model's classes is refused by the attack
        assert unit.params_for(lenet, {p.name: value})[p.name] == (int(value) if p.kind == "int" else float(value))


@pytest.mark.parametrize("unit, p", OTHER)
def test_choice_and_bool_parameters_refuse_other_values(lenet, unit, p):
    for value in ["nan", float("nan"), None, "no-such-choice", [p.default], 3.5]:
        if p.kind == "bool" and value in ("no",):
            continue
        _refuses(unit, lenet, p, value)


def test_unknown_parameter_and_target_beyond_classes(lenet):
    with pytest.raises(InputError, match=r"'fgsm' has no parameter 'epsilon'; its parameters are: eps, target"):
        ATTACKS["fgsm"].params_for(lenet, {"epsilon": 0.1})
    with pytest.raises(InputError, match=r"parameter 'target' must be -1 \(untargeted\) or a class in \[0, 9\]"):
        ATTACKS["pgd"].params_for(lenet, {"target": 10})


def test_explain_refuses_bad_k(lenet, digits):
    from nip_core.analyses.explain import explain

    x, y = digits
    for k in (float("nan"), float("inf"), 0.0, 0.6, -0.1):
        with pytest.raises(InputError, match=r"parameter 'k' must be float in \(0, 0.5\]"):
            explain(lenet, x[0], int(y[0]), k=k)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    from nip_core.data import gallery
    from nip_core.images import tensor_to_png_bytes

    path = tmp_path_factory.mktemp("cli") / "digit.png"
    path.write_bytes(tensor_to_png_bytes(gallery("mnist")[3].image))
    return path


CLI_CASES = [
    (["--attack-params", "eps=nan"], "parameter 'eps' must be float in [0, 1]; got 'nan'"),
]


def test_cli_bad_parameter_exits_2_with_one_line(digit_png, tmp_path):
    # One process per case, run at once: each pays the interpreter and torch start-up. The
    # in-process tests above cover every parameter; this checks what the CLI user sees.
    procs = [subprocess.Popen([sys.executable, "-m", "nip_core", "explain", "--model", "lenet-mnist",
                               "--image", str(digit_png), "--out", str(tmp_path / f"out{i}"), *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, (argv, _) in enumerate(CLI_CASES)]
    for p, (argv, expected) in zip(procs, CLI_CASES):
        out, err = p.communicate(timeout=120)
        lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
        assert p.returncode == 2, (argv, err)
        assert "Traceback" not in err, err
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (argv, err)
        assert not (tmp_path / f"out{procs.index(p)}" / "summary.json").exists()


def test_nip_layer_is_any_of_the_models_own_layers():
    from nip_core.defenses import DEFENSES
    from nip_core.models import load_model

    resnet = load_model("resnet8-cifar10")
    for name in ("nip-global", "nip-oracle", "nip"):
        assert DEFENSES[name].params_for(resnet, {"layer": "stack2"})["layer"] == "stack2"
        with pytest.raises(InputError, match="has no layer 'fc1'; choose one of: stem, stack1, stack2, stack3"):
            DEFENSES[name].params_for(resnet, {"layer": "fc1"})
