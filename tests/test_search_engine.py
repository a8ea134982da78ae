"""The search loop with the in-process executor: dedup, funnel, store, resume after SIGKILL,
simplification. Fitness comes from the stand-in quadratic in search_toy.py."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optdisco.dsl import fingerprint, parse
from optdisco.search import Run, Search, SearchConfig, Tier
from optdisco.search.screen import screen
from optdisco.search.simplify import simplify_program

import search_toy

TESTS = Path(__file__).resolve().parent
TIERS = [Tier("quadratic", steps=15), Tier("quadratic", steps=40, promote=0.3)]


@pytest.fixture
def seeds(tmp_path):
    return search_toy.seed_files(tmp_path)


def config(seeds, **kw):
    base = dict(budget=40, executor="local", workers=1, seed=7, seed_programs=seeds, tiers=TIERS,
                population=10, tournament=3)
    base.update(kw)
    return SearchConfig(**base)


def history_key(run):
    return [(r["candidate"], r["tier"], r["fitness"], r["program"], r["mutation"], tuple(r["parents"]))
            for r in run.history()]


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, program, tier, device=None):
        self.calls += 1
        return search_toy.quad_eval(program, tier)


def test_search_spends_its_budget_and_records_everything(tmp_path, seeds):
    ev = Counting()
    run = Search(config(seeds), store=tmp_path / "run.db", evaluator=ev).run()
    hist = run.history()
    assert len(hist) == 40 == ev.calls  # every evaluation recorded, none run twice
    # each evaluation's fitness is the stand-in's value for that program and tier
    for r in hist[:10]:
        steps = TIERS[r["tier"]].steps
        assert r["fitness"] == search_toy.quad_fitness(parse(r["program"]), steps)
    assert run.config.to_dict()["seed"] == 7
    # the best program beats plain SGD (the search found something)
    sgd_f = search_toy.quad_fitness(parse(search_toy.SGD), 40)
    assert run.best(1)[0]["fitness"] < sgd_f
    assert run.best(1)[0]["tier_reached"] == 1
    assert run.ranked(2)["id"] == run.best(2)[1]["id"]
    with pytest.raises(ValueError, match="rank 1000"):
        run.ranked(1000)
    # children reach an evaluation only after passing the checker and the screen
    children = [c for c in run.candidates() if c["origin"] == "child"]
    assert children
    for c in children:
        assert screen(parse(c["program"])) is None
    assert run.stats()["rejected"] > 0


def test_duplicates_reuse_fitness_and_cost_no_evaluation(tmp_path, seeds):
    # a third seed that computes the same update as SGD: its fingerprint matches
    (tmp_path / "sgd2.opt").write_text("hyper lr = 0.1\nstep = g * lr\nw = w - step\n")
    ev = Counting()
    run = Search(config(seeds + [str(tmp_path / "sgd2.opt")], budget=60), store=tmp_path / "run.db",
                 evaluator=ev).run()
    cands = run.candidates()
    dups = [c for c in cands if c["origin"] == "duplicate"]
    assert len(dups) >= 2
    assert any(c["program"].endswith("w = w - step\n") for c in dups)
    by_id = {c["id"]: c for c in cands}
    for d in dups:
        orig = by_id[d["duplicate_of"]]
        assert orig["fingerprint"] == d["fingerprint"] == fingerprint(parse(d["program"]))
        assert d["fitness"] == orig["fitness"]
        assert run.store.evaluations(d["id"]) == []  # no evaluation of its own
    evaluated = [c for c in cands if c["origin"] != "duplicate"]
    assert len({c["fingerprint"] for c in evaluated}) == len(evaluated)
    assert ev.calls == 60 == len(run.history())
    assert run.stats()["duplicates"] == run.state["duplicates"] >= len(dups)


def test_funnel_promotes_the_best_fraction(tmp_path, seeds):
    run = Search(config(seeds, budget=50), store=tmp_path / "run.db", evaluator=search_toy.quad_eval).run()
    hist = run.history()
    origin = {c["id"]: c["origin"] for c in run.candidates()}
    promoted = {r["candidate"] for r in hist if r["tier"] == 1}
    seen0 = []
    for r in hist:
        if r["tier"] != 0:
            continue
        seen0.append(r["fitness"])
        finite = [f for f in seen0 if math.isfinite(f)]
        rank = sum(f < r["fitness"] for f in finite) + 1
        should = origin[r["candidate"]] == "seed" or (math.isfinite(r["fitness"]) and rank <= math.ceil(0.3 * len(finite)))
        # the last few promotions may not have run before the budget ran out
        if r["candidate"] in promoted:
            assert should
        elif should:
            assert r["index"] > len(hist) - 3
    assert promoted  # something reached tier 1
    # every candidate's recorded score is its last tier's fitness
    for c in run.candidates():
        if c["origin"] != "duplicate" and c["status"] in ("done", "failed"):
            evs = run.store.evaluations(c["id"])
            assert c["tier_reached"] == evs[-1]["tier"] and c["fitness"] == evs[-1]["fitness"]


def test_same_seed_same_history_and_resume_continues_exactly(tmp_path, seeds):
    a = Search(config(seeds), store=tmp_path / "a.db", evaluator=search_toy.quad_eval).run()
    b = Search(config(seeds, budget=17), store=tmp_path / "b.db", evaluator=search_toy.quad_eval).run()
    b = Search.resume(tmp_path / "b.db", evaluator=search_toy.quad_eval, budget=40).run()
    assert history_key(a) == history_key(b)
    c = Search(config(seeds, seed=8), store=tmp_path / "c.db", evaluator=search_toy.quad_eval).run()
    assert history_key(c) != history_key(a)


def test_store_refuses_to_overwrite_a_run(tmp_path, seeds):
    Search(config(seeds, budget=3), store=tmp_path / "a.db", evaluator=search_toy.quad_eval).run()
    with pytest.raises(Exception, match="already holds a run"):
        Search(config(seeds, budget=3), store=tmp_path / "a.db", evaluator=search_toy.quad_eval)


def test_driver_killed_with_sigkill_resumes_with_each_evaluation_once(tmp_path, seeds):
    log = tmp_path / "calls.log"
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import search_toy
        from optdisco.search import Search, SearchConfig, Tier
        tiers = [Tier("quadratic", steps=15), Tier("quadratic", steps=40, promote=0.3)]
        cfg = SearchConfig(budget=40, executor="local", workers=1, seed=7, seed_programs={seeds!r},
                           tiers=tiers, population=10, tournament=3)
        Search(cfg, store={str(tmp_path / 'killed.db')!r},
               evaluator=search_toy.Logged({str(log)!r}, delay=0.05)).run()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = tmp_path / "killed.db"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        if db.exists():
            try:
                con = sqlite3.connect(str(db))
                done = con.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                done = 0
            if done >= 12:
                break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 12 <= done < 40
    before = Run(db).history()
    calls_before = len(log.read_text().splitlines())
    assert len(before) >= done and calls_before >= len(before)

    resumed = Search.resume(db, evaluator=search_toy.Logged(str(log))).run()
    after = resumed.history()
    assert len(after) == 40
    keys = [(r["candidate"], r["tier"]) for r in after]
    assert len(set(keys)) == len(keys)  # each evaluation recorded exactly once
    assert after[: len(before)] == before  # nothing recorded before the kill changed
    # only evaluations in flight at the kill ran twice: the log has at most one extra call
    assert len(log.read_text().splitlines()) - 40 <= 1
    # and the run is the run that was never killed
    ref = Search(config(seeds), store=tmp_path / "ref.db", evaluator=search_toy.quad_eval).run()
    assert history_key(resumed) == history_key(ref)


def test_simplification_removes_planted_redundancy_and_keeps_what_matters():
    planted = parse(textwrap.dedent("""
        hyper lr = 0.01, mu = 0.9
        state b = zeros
        gc = clip(g, -1e20, 1e20)
        b = mu * b + gc
        u = sign(sign(b))
        w = w - lr * b
    """))
    # gc is the gradient unchanged (a behaviour-preserving removal); u is dead; the
    # momentum statement is necessary: without it the quadratic ends far worse
    fit = lambda p: search_toy.quad_fitness(p, 40)  # noqa: E731
    without_momentum = parse("hyper lr = 0.01\nw = w - lr * g\n")
    assert fit(without_momentum) > 2 * fit(planted)
    out = simplify_program(planted, fit, tolerance=0.01)
    text = out.program.to_text()
    assert "clip" not in text and "sign" not in text
    assert "b = " in text and "state b" in text  # momentum kept
    assert fingerprint(out.program) == fingerprint(parse(
        "hyper lr = 0.01, mu = 0.9\nstate b = zeros\nb = mu * b + g\nw = w - lr * b\n"))
    assert out.fitness_after <= out.fitness_before * 1.01
    assert any(s.kept and "same behaviour" in s.what for s in out.steps)
    assert any(not s.kept for s in out.steps)  # the ablation of the momentum was undone


def test_simplification_rounds_constants_within_tolerance():
    p = parse("hyper lr = 0.01, mu = 0.9012\nstate b = zeros\nb = mu * b + g\nw = w - lr * b\n")
    fit = lambda q: search_toy.quad_fitness(q, 40)  # noqa: E731
    out = simplify_program(p, fit, tolerance=0.05)
    assert out.program.hyper_defaults["mu"] in (0.9, 0.91)
    assert out.fitness_after <= out.fitness_before + 0.05 * abs(out.fitness_before)


def test_config_from_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('budget = 9\nseed_programs = ["sgd"]\n[[tiers]]\ntask = "quadratic"\nsteps = 5\n'
                 '[[tiers]]\ntask = "mlp"\npromote = 0.5\n')
    c = SearchConfig.from_toml(f, workers=3)
    assert c.budget == 9 and c.workers == 3 and c.seed_programs == ("sgd",)
    assert c.tiers == (Tier("quadratic", steps=5), Tier("mlp", promote=0.5))
    assert SearchConfig.from_dict(c.to_dict()) == c
    f.write_text("budgit = 3\n")
    with pytest.raises(ValueError, match="budgit"):
        SearchConfig.from_toml(f)
    with pytest.raises(ValueError, match="executor"):
        SearchConfig(executor="dask")


def test_restarts_refill_the_population_from_the_best_and_the_seeds(tmp_path, seeds):
    s = Search(config(seeds, budget=40, restart_after=4), store=tmp_path / "r.db", evaluator=search_toy.quad_eval)
    run = s.run()
    assert s.state["restarts"] >= 1
    assert len(run.history()) == 40
    s._restart()
    pop = [p[0] for p in s.state["population"]]
    finished = [c for c in run.candidates() if c["status"] in ("done", "failed") and c["origin"] != "duplicate"]
    finished.sort(key=lambda c: (-c["tier_reached"], c["fitness"], c["id"]))
    top = [c["id"] for c in finished[: 10 // 4]]
    seed_ids = [c["id"] for c in finished if c["origin"] == "seed" and c["id"] not in top]
    assert pop == top + seed_ids


def test_simplification_drops_a_state_whose_previous_value_is_never_read():
    p = parse("hyper lr = 0.01, mu = 0.9\nstate m = zeros, b = zeros\nm = g\nb = mu * b + m\nw = w - lr * b\n")
    out = simplify_program(p, lambda q: search_toy.quad_fitness(q, 40), tolerance=0.01)
    assert out.program.state_names == ("b",)
    assert fingerprint(out.program) == fingerprint(p)
    assert any("never read" in s.what and s.kept for s in out.steps)
    # a state read before its update stays
    ema = parse("hyper lr = 0.01, mu = 0.9\nstate m = zeros\nm = ema(m, g, mu)\nw = w - lr * m\n")
    assert simplify_program(ema).program.state_names == ("m",)
