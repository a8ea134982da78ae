"""Multi-objective search (optdisco.search.pareto): a dominated program never enters the front,
the front is exactly the non-dominated set of the finished candidates, and resume restores it
exactly. Fitness comes from the stand-in quadratic in search_toy.py; memory is the program's."""

import math

import pytest

from optdisco.search import Search, SearchConfig, Tier
from optdisco.search import pareto

import search_toy

TIERS = [Tier("quadratic", steps=15), Tier("quadratic", steps=40, promote=0.3)]
ADAM = ("# Adam\nhyper lr = 0.01\nstate m = zeros, v = zeros\nm = ema(m, g, 0.9)\nv = ema(v, g * g, 0.999)\n"
        "w = w - lr * m / (sqrt(v) + 1e-8)\n")


@pytest.fixture
def seeds(tmp_path):
    paths = search_toy.seed_files(tmp_path)
    adam = tmp_path / "adam.opt"
    adam.write_text(ADAM)
    return paths + [str(adam)]


def config(seeds, **kw):
    base = dict(budget=40, executor="local", workers=1, seed=3, seed_programs=seeds, tiers=TIERS,
                population=10, tournament=3, objectives=("loss", "memory"))
    base.update(kw)
    return SearchConfig(**base)


def test_dominance_and_the_archive_by_hand():
    # points: (loss as (−tier, fitness), memory)
    a, b, c = ((-1, 0.5), 8.0), ((-1, 0.6), 4.0), ((-1, 0.7), 8.0)  # c is dominated by a
    assert pareto.dominates(a, c) and not pareto.dominates(a, b) and not pareto.dominates(b, a)
    assert pareto.dominates(((-1, 9.0), 8.0), ((0, 0.1), 0.0)) is False  # memory is worse
    assert pareto.dominates(((-1, 9.0), 0.0), ((0, 0.1), 0.0))  # a later tier beats any earlier fitness
    front = []
    front, ok = pareto.front_update(front, 1, a)
    assert ok
    front, ok = pareto.front_update(front, 2, b)
    assert ok
    front, ok = pareto.front_update(front, 3, c)
    assert not ok and [m[0] for m in front] == [1, 2]
    front, ok = pareto.front_update(front, 4, ((-1, 0.4), 4.0))  # dominates both
    assert ok and [m[0] for m in front] == [4]
    front, ok = pareto.front_update(front, 5, ((-1, math.inf), 0.0))  # a failure never enters
    assert not ok


def test_ranks_and_crowding_by_hand():
    pts = [(1.0, 4.0), (2.0, 2.0), (4.0, 1.0), (3.0, 3.0), (5.0, 5.0)]
    assert pareto.nondominated_ranks(pts) == [0, 0, 0, 1, 2]
    d = pareto.crowding(pts, pareto.nondominated_ranks(pts))
    # rank 0 in objective 1: 1, 2, 4 (range 3); objective 2: 1, 2, 4 (range 3); the middle point
    # (2, 2) has gaps (4 − 1)/3 + (4 − 1)/3 = 2; the ends are infinite
    assert d[0] == d[2] == math.inf and d[1] == pytest.approx(2.0)


def finished_points(run_search):
    """Each finished candidate's objectives at the tier its funnel ended on."""
    objs = pareto.load(run_search.store)
    out = {}
    for r in run_search.store.candidates("status IN ('done', 'failed') AND origin != 'duplicate'"):
        values = objs[(r["id"], r["tier_reached"])]
        out[r["id"]] = pareto.key(values, r["tier_reached"], ("loss", "memory"))
    return out


def test_a_dominated_program_never_enters_the_front(tmp_path, seeds):
    s = Search(config(seeds), store=tmp_path / "run.db", evaluator=search_toy.quad_eval)
    s.run()
    pts = finished_points(s)
    front = {cid for cid, _ in pareto.front_points(s.state["front"])}
    assert len(pts) > 20 and front
    for cid in front:
        assert not any(pareto.dominates(p, pts[cid]) for p in pts.values()), cid
    # and every finished candidate with finite objectives off the front is dominated by a member
    for cid, p in pts.items():
        if cid not in front and pareto.finite(p):
            assert any(pareto.dominates(pts[f], p) or pts[f] == p for f in front), cid
    # memory is the program's state bytes: SGD (none) is on the front, Adam (8 B/element) has the best loss
    memories = {p[1] for cid, p in pts.items() if cid in front}
    assert 0.0 in memories


def test_resume_restores_the_front_exactly(tmp_path, seeds):
    full = Search(config(seeds), store=tmp_path / "full.db", evaluator=search_toy.quad_eval)
    full.run()
    half = Search(config(seeds, budget=20), store=tmp_path / "half.db", evaluator=search_toy.quad_eval)
    half.run()
    saved = half.state["front"]
    half.close()
    resumed = Search.resume(tmp_path / "half.db", evaluator=search_toy.quad_eval, budget=40)
    assert resumed.state["front"] == saved  # read back as it was written
    resumed.run()
    assert resumed.state["front"] == full.state["front"]
    hist = lambda s: [(r["candidate"], r["tier"], r["fitness"]) for r in s.store.evaluations()]
    assert hist(resumed) == hist(full)


def test_objectives_are_checked_by_name():
    with pytest.raises(ValueError, match="objectives.*'speed'"):
        SearchConfig(objectives="loss,speed", executor="local")
    with pytest.raises(ValueError, match="'loss' must be one of them"):
        SearchConfig(objectives=("memory",), executor="local")
    assert SearchConfig(objectives="loss, quant", executor="local").objectives == ("loss", "quant")


def test_objectives_from_a_toml_file(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('objectives = ["loss", "memory", "cost"]\nexecutor = "local"\n')
    assert SearchConfig.from_toml(good).objectives == ("loss", "memory", "cost")
    bad = tmp_path / "bad.toml"
    bad.write_text('objectives = ["loss", "speed"]\n')
    with pytest.raises(ValueError, match=r"bad\.toml: search config: objectives: unknown \['speed'\]"):
        SearchConfig.from_toml(bad)


def test_report_and_export_show_the_front_with_the_library_on_the_same_axes(tmp_path, seeds, capsys):
    from optdisco.search import Run
    from optdisco.search.cli import main
    from optdisco.search.front import front, table
    from optdisco.search.report import write_report

    s = Search(config(seeds), store=tmp_path / "run.db", evaluator=search_toy.quad_eval)
    s.run()
    s.close()
    run = Run(tmp_path / "run.db")
    rows = front(run)
    assert [r["point"] for r in rows] == list(range(1, len(rows) + 1))
    text = table(run)
    for name in ("`sgd`", "`momentum`", "`adam`"):  # the seeds, placed beside the front
        assert name in text
    out = write_report(run, tmp_path / "rep")
    assert (out / "pareto_front.png").stat().st_size > 0
    assert "## Pareto front" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run.db"), "--front"]) == 0
    assert capsys.readouterr().out.count("\n") >= len(rows) + 2
    k = len(rows)
    assert main(["export", str(tmp_path / "run.db"), "--front", "--point", str(k), "-o", str(tmp_path / "p.py")]) == 0
    source = (tmp_path / "p.py").read_text()
    assert rows[k - 1]["text"].splitlines()[-1] in source
    assert main(["export", str(tmp_path / "run.db"), "--front", "--point", str(k + 1)]) == 2
    assert f"points 1 to {k}, not {k + 1}" in capsys.readouterr().err


def test_quant_objective_is_the_int4_over_full_precision_ratio_of_the_evaluation():
    from optdisco.search import objectives
    from optdisco.search.evaluator import ProxyEvaluator

    ev = ProxyEvaluator(options=objectives.evaluator_options(("loss", "quant")))
    tier = Tier("quadratic", steps=30, seeds=1, points=3)
    out = ev(_sgd(), tier)
    values = objectives.compute(("loss", "quant"), _sgd(), out.fitness, out.result)
    q = out.result["quantized"]
    assert values["quant"] == pytest.approx(float(q["int4"]) / out.fitness, rel=1e-12)
    assert values["quant_int8"] == pytest.approx(float(q["int8"]) / out.fitness, rel=1e-12)


def _sgd():
    from optdisco import library

    return library.load("sgd")


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_front(tmp_path, seeds):
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import textwrap
    import time
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    db = tmp_path / "killed.db"
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tests)!r})
        import search_toy
        from optdisco.search import Search, SearchConfig, Tier
        tiers = [Tier("quadratic", steps=15), Tier("quadratic", steps=40, promote=0.3)]
        cfg = SearchConfig(budget=40, executor="local", workers=1, seed=3, seed_programs={seeds!r}, tiers=tiers,
                           population=10, tournament=3, objectives=("loss", "memory"))
        Search(cfg, store={str(db)!r}, evaluator=search_toy.Logged({str(tmp_path / 'log')!r}, delay=0.05)).run()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, done = time.time() + 120, 0
    while time.time() < deadline and done < 15:
        if db.exists():
            try:
                con = sqlite3.connect(str(db))
                done = con.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                done = 0
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 15 <= done < 40
    resumed = Search.resume(db, evaluator=search_toy.quad_eval)
    resumed.run()
    ref = Search(config(seeds), store=tmp_path / "ref.db", evaluator=search_toy.quad_eval)
    ref.run()
    assert resumed.state["front"] == ref.state["front"]
    assert pareto.load(resumed.store) == pareto.load(ref.store)
