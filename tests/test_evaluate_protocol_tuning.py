"""Equal tuning: every program gets the same trials, spent on lr alone or on lr and the
hyperparameters it declares tuned (a Latin hypercube)."""

from __future__ import annotations

import math

import pytest

from optdisco.dsl import DSLError, fingerprint, parse
from optdisco.evaluate import evaluate
from optdisco.evaluate.protocol import latin_hypercube

SGD_SCALED = "hyper lr = 0.1, r = 0.3{tune}\nw = w - lr * r * g\n"
MOMENTUM = "hyper lr = 0.01, mu = 0.9{tune}\nstate b = zeros\nb = mu * b + g\nw = w - lr * b\n"


def test_tune_declaration_round_trips_and_changes_the_fingerprint():
    p = parse(SGD_SCALED.format(tune=" tune(0.01, 1)"))
    assert p.tuned == {"r": (0.01, 1.0)}
    assert parse(p.to_text()) == p and "tune(0.01, 1)" in p.to_text()
    assert fingerprint(p) != fingerprint(parse(SGD_SCALED.format(tune="")))


@pytest.mark.parametrize("bad,msg", [(" tune(1, 0.1)", "0 < low < high"), (" tune(0, 1)", "0 < low < high"),
                                     (" tune(0.1 1)", "expected ','")])
def test_bad_tuning_ranges_are_refused_with_a_position(bad, msg):
    with pytest.raises(DSLError, match=msg) as e:
        parse(SGD_SCALED.format(tune=bad))
    assert e.value.line == 1
    with pytest.raises(DSLError, match="lr is always tuned"):
        parse("hyper lr = 0.1 tune(0.01, 1)\nw = w - lr * g\n")


def test_latin_hypercube_takes_every_stratum_once():
    lrs = [10.0 ** (k / 2) for k in range(8)]
    d = latin_hypercube(lrs, {"r": (1e-3, 1.0), "mu": (0.01, 0.1)})
    for name, (lo, hi) in (("r", (1e-3, 1.0)), ("mu", (0.01, 0.1))):
        strata = sorted(round(8 * math.log(d[lr][name] / lo) / math.log(hi / lo) - 0.5, 9) for lr in lrs)
        assert strata == list(range(8))
    assert d == latin_hypercube(lrs, {"r": (1e-3, 1.0), "mu": (0.01, 0.1)})  # fixed design


@pytest.mark.parametrize("steps", [30])
def test_every_program_gets_the_same_number_of_trials(steps):
    plain = evaluate(MOMENTUM.format(tune=""), "quadratic", steps=steps, seeds=(0,))
    tuned = evaluate(MOMENTUM.format(tune=" tune(0.5, 0.99)"), "quadratic", steps=steps, seeds=(0,))
    # same trials: the same learning rates, one member per (lr, seed); the tuned one varies mu across them
    assert len(tuned.members) == len(plain.members) and tuned.lrs == plain.lrs
    assert len(set(tuned.trials["mu"])) == 8  # the first round's 8 strata; an extension reuses the best's value
    assert tuned.best_hyper["mu"] == tuned.trials["mu"][tuned.lrs.index(tuned.best_lr)]
    assert plain.trials == {} and plain.best_hyper == {}


def test_a_tuned_trial_equals_the_program_run_at_those_values():
    tuned = evaluate(MOMENTUM.format(tune=" tune(0.5, 0.99)"), "quadratic", steps=30, seeds=(0, 1), extend=False)
    k = 3
    lr, mu = tuned.lrs[k], tuned.trials["mu"][k]
    fixed = evaluate(MOMENTUM.format(tune=""), "quadratic", steps=30, seeds=(0, 1), lrs=[lr], hyper={"mu": mu},
                     extend=False)
    assert [m.final_loss for m in tuned.at_lr(lr)] == pytest.approx([m.final_loss for m in fixed.members], rel=1e-6)
