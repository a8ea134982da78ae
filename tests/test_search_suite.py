"""Selection over a task suite, held-out tasks kept out of selection, the random-search baseline."""

from __future__ import annotations

import math

import pytest

from optdisco.evaluate import evaluate
from optdisco.evaluate.suite import GAIN_CAP, aggregate, geometric_mean, ratios
from optdisco.search import Search, SearchConfig
from optdisco.search.config import Tier
from optdisco.search.evaluator import ProxyEvaluator

from search_toy import seed_files, suite_eval


def by_hand(rs: list[float]) -> float:
    """The documented rule, written out: exp(mean(max(log r, -log 2)) + max(0, max log r))."""
    logs = [max(math.log(r), -math.log(2.0)) for r in rs]
    return math.exp(sum(logs) / len(logs) + max(0.0, max(logs)))


def test_aggregate_follows_the_documented_rule():
    for rs in ([1.0, 1.0], [0.9, 1.1, 1.0], [0.3, 1.0, 1.2], [0.95, 0.97], [2.0, 0.5, 0.7, 1.01]):
        assert aggregate(dict(enumerate(rs))) == pytest.approx(by_hand(rs), rel=1e-12)
    assert GAIN_CAP == 2.0
    assert aggregate({"a": 1.0, "b": math.inf}) == math.inf
    assert geometric_mean({"a": 0.5, "b": 2.0}) == pytest.approx(1.0)


def test_winning_one_task_and_losing_another_badly_scores_worse_than_tying_both():
    tie = aggregate({"a": 1.0, "b": 1.0})
    assert tie == pytest.approx(1.0)
    for win, loss in ((0.8, 1.5), (0.5, 1.5), (0.3, 2.0), (0.9, 1.2)):
        assert aggregate({"a": win, "b": loss}) > tie
    # the plain geometric mean would buy the loss back
    assert geometric_mean({"a": 0.5, "b": 1.5}) < tie


def test_ratios_divide_by_the_reference_and_fail_on_missing_tasks():
    r = ratios({"a": 2.0, "b": 3.0}, {"a": 4.0, "b": 3.0})
    assert r == {"a": 0.5, "b": 1.0}
    assert ratios({"a": 2.0}, {"a": 4.0, "b": 1.0})["b"] == math.inf
    with pytest.raises(ValueError, match="reference"):
        ratios({"a": 1.0}, {"a": 0.0})


def test_suite_tier_fitness_is_the_aggregate_of_each_tasks_normalized_score():
    tier = Tier(tasks=("quadratic", "memory"), seeds=1, points=3, steps=20)
    refs = {"quadratic": 0.01, "memory": 2.0}
    out = ProxyEvaluator()(__import__("optdisco.library", fromlist=["load"]).load("adam"), tier.with_references(refs))
    raw = {t: evaluate("adam", t, steps=20, seeds=(0,), points=3).fitness for t in ("quadratic", "memory")}
    assert out.result["fitness_by_task"] == pytest.approx(raw, rel=1e-12)
    assert out.fitness == pytest.approx(by_hand([raw["quadratic"] / 0.01, raw["memory"] / 2.0]), rel=1e-12)


def _config(tmp_path, **kw):
    base = dict(budget=14, workers=1, executor="local", suite=("q10", "q40"), heldout=("q20",),
                seed_programs=seed_files(tmp_path), population=6, tournament=3, heldout_every=4, finalists=2)
    base.update(kw)
    return SearchConfig(**base)


def _trace(run):
    return [(c["program"], c["parents"], c["tier_reached"], c["fitness"]) for c in run.candidates()]


def test_references_are_computed_once_and_stored(tmp_path):
    run = Search(_config(tmp_path), store=tmp_path / "a.db", evaluator=suite_eval).run()
    refs = run.store.get_meta("references")
    assert set(refs) == {"0", "1", "heldout"}
    assert set(refs["0"]) == {"q10", "q40"} and set(refs["heldout"]) == {"q20"}
    seed = [c for c in run.candidates() if c["origin"] == "seed"]
    assert all(c["fitness"] > 0 for c in seed)
    # every recorded suite evaluation is the aggregate against exactly these references
    for e in run.store.evaluations():
        by = e["result"]["fitness_by_task"]
        if all(v is not None for v in by.values()):
            refs_t = refs[str(e["tier"])]
            assert e["fitness"] == pytest.approx(aggregate(ratios(by, refs_t)), rel=1e-12)


def test_heldout_tasks_never_enter_selection(tmp_path):
    """The same search with its held-out task made impossible selects exactly the same programs."""
    a = Search(_config(tmp_path), store=tmp_path / "a.db", evaluator=suite_eval).run()
    b = Search(_config(tmp_path, heldout=("impossible",)), store=tmp_path / "b.db", evaluator=suite_eval).run()
    c = Search(_config(tmp_path, heldout_every=0), store=tmp_path / "c.db", evaluator=suite_eval).run()
    assert a.heldout(), "finalists were evaluated on the held-out suite"
    assert not b.heldout() and b.state["heldout_error"]
    assert _trace(a) == _trace(b) == _trace(c)
    assert a.state["heldout_checks"][:3] == [4, 8, 12]


def test_heldout_tasks_may_not_be_selection_tasks(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        _config(tmp_path, heldout=("q40",))


def _inverted(program, tier, device=None):
    out = suite_eval(program, tier, device)
    if math.isfinite(out.fitness):
        out.fitness = 1.0 / out.fitness
    return out


def test_random_strategy_never_uses_fitness_to_pick_parents(tmp_path):
    """With one tier, a fitness turned upside down changes nothing the random strategy does, and
    changes what evolution does."""
    kw = dict(suite=None, task="toy", heldout=(), heldout_every=0, budget=24)
    tiers = (Tier("toy", steps=40),)
    for strategy, same in (("random", True), ("evolution", False)):
        runs = [Search(_config(tmp_path, strategy=strategy, tiers=tiers, **kw), store=tmp_path / f"{strategy}{i}.db",
                       evaluator=ev).run() for i, ev in enumerate((suite_eval, _inverted))]
        a, b = ([(c["program"], c["parents"]) for c in r.candidates()] for r in runs)
        assert (a == b) is same, strategy


def test_simplification_removes_a_disguised_identity():
    """The issue's finding: ``m / (sign(sqrt(v * u)) + eps)`` is SGD with momentum dressed as Adam."""
    from optdisco.dsl import parse
    from optdisco.search.simplify import simplify_program

    p = parse("hyper lr = 0.01, eps = 1e-8\nstate m = zeros, v = zeros\nm = ema(m, g, 0.9)\n"
              "v = ema(v, g * g, 0.99)\nw = w - lr * m / (sign(sqrt(v * 2)) + eps)\n")
    out = simplify_program(p).program
    assert "sign" not in out.to_text() and out.state_names == ("m",)


def test_a_suite_winner_exports_with_the_geometric_mean_of_its_tuned_lrs():
    from optdisco.search.context import export_context

    sched = {"name": "warmup_cosine", "warmup": 0.05, "floor": 0.01}
    ctx = {"tasks": {"a": {"lr": 1e-3, "hyper": {"r": 0.1}, "schedule": dict(sched, steps=50)},
                     "b": {"lr": 1e-1, "hyper": {"r": 0.1}, "schedule": dict(sched, steps=200)},
                     "c": {"lr": 1e-2, "hyper": {"r": 0.3}, "schedule": dict(sched, steps=400)}}}
    out = export_context(ctx)
    assert out["defaults"]["lr"] == pytest.approx(1e-2)
    assert "r" not in out["defaults"]  # the tasks disagree on it
    assert out["schedule"]["steps"] == 200 and out["schedule"]["warmup"] == 0.05
    assert "a 0.001" in out["about"] and "b 0.1" in out["about"]


def test_finalize_simplifies_and_validates_on_the_heldout_suite(tmp_path, monkeypatch):
    """End of a run: the best program simplified and recorded, then validated per held-out task
    against the baselines, stored, and shown by the report in its own section."""
    from optdisco.search import finalize as fin
    from optdisco.search.report import write_report

    run = Search(_config(tmp_path, heldout=("quadratic",)), store=tmp_path / "f.db", evaluator=suite_eval).run()
    monkeypatch.setattr(fin, "ProxyEvaluator", lambda: suite_eval)
    out = fin.finalize(run, top=1, seeds=2, baselines=("adamw", "sgd"))
    assert [r["name"] for r in out["tasks"]["quadratic"]] == ["found1", "adamw", "sgd"]
    assert {r["verdict"] for r in out["tasks"]["quadratic"][1:]} <= {"reference", "better", "worse",
                                                                    "tie (within seed spread)"}
    from optdisco.search import Run

    again = Run(tmp_path / "f.db")
    assert again.validation()["table"] == out["table"] and "| found1 |" in out["table"]
    text = (write_report(again) / "report.md").read_text()
    assert "## Validation on the held-out suite" in text and out["table"] in text


def test_kendall_tau_against_pairs_counted_by_hand():
    from optdisco.evaluate.rank import kendall_tau

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # pairs of [1,2,3,4] vs [1,3,2,4]: 5 concordant, 1 discordant -> 4/6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # one tie in b ([1,1,2]): pairs (0,1) tied in b, (0,2), (1,2) concordant -> 2/sqrt(3*2)
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(6))
