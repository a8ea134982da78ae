"""The Ray executor: same history as in-process with one worker, a killed worker costs no
completed evaluation, a hung evaluation is stopped. One local Ray instance for the session."""

import math
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402

from optdisco.search import Search, SearchConfig, Tier  # noqa: E402
from optdisco.search.executors import RayExecutor  # noqa: E402

import search_toy  # noqa: E402

# Ray workers cannot import the tests folder: ship the stand-in evaluators by value.
cloudpickle.register_pickle_by_value(search_toy)

TIERS = [Tier("quadratic", steps=15, time_limit=60), Tier("quadratic", steps=40, promote=0.3, time_limit=60)]


@pytest.fixture(scope="session")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def seeds(tmp_path):
    return search_toy.seed_files(tmp_path)


def config(seeds, **kw):
    base = dict(budget=24, executor="ray", workers=1, seed=3, seed_programs=seeds, tiers=TIERS,
                population=8, tournament=3)
    base.update(kw)
    return SearchConfig(**base)


def key(run):
    return [(r["candidate"], r["tier"], r["fitness"], r["program"], r["mutation"]) for r in run.history()]


def test_ray_and_in_process_give_the_same_history(ray_session, tmp_path, seeds):
    a = Search(config(seeds), store=tmp_path / "ray.db", evaluator=search_toy.quad_eval).run()
    b = Search(config(seeds, executor="local"), store=tmp_path / "local.db", evaluator=search_toy.quad_eval).run()
    assert key(a) == key(b)
    assert len(key(a)) == 24
    workers = {r["worker"] for r in a.history()}
    local = {r["worker"] for r in b.history()}
    assert len(local) == 1 and not workers & local  # the Ray run really ran elsewhere


def test_two_workers_spend_the_budget(ray_session, tmp_path, seeds):
    run = Search(config(seeds, workers=2, budget=30), store=tmp_path / "two.db",
                 evaluator=search_toy.quad_eval).run()
    hist = run.history()
    assert len(hist) == 30
    assert len({(r["candidate"], r["tier"]) for r in hist}) == 30
    assert all(math.isfinite(r["fitness"]) for r in hist[:2])


def test_killed_worker_costs_no_completed_evaluation(ray_session, tmp_path, seeds):
    counter = str(tmp_path / "calls")
    ev = search_toy.KillOnCall(counter, 6)  # the 6th evaluation kills its worker process
    run = Search(config(seeds, budget=20), store=tmp_path / "kill.db", evaluator=ev).run()
    hist = run.history()
    assert len(hist) == 20
    assert len({(r["candidate"], r["tier"]) for r in hist}) == 20
    fails = run.store.failures()
    assert [f["kind"] for f in fails] == ["died"]
    retried = [r for r in hist if r["attempts"] == 2]
    assert len(retried) == 1 and math.isfinite(retried[0]["fitness"])
    assert (retried[0]["candidate"], retried[0]["tier"]) == (fails[0]["candidate"], fails[0]["tier"])
    # the five evaluations before the kill are recorded once, as in an undisturbed run
    ref = Search(config(seeds, budget=20, executor="local"), store=tmp_path / "ref.db",
                 evaluator=search_toy.quad_eval).run()
    assert key(run) == key(ref)
    assert int(Path(counter).read_text()) == 21


def test_hung_evaluation_is_stopped_and_recorded(ray_session, tmp_path, seeds):
    counter = str(tmp_path / "calls")
    ev = search_toy.HangOnCall(counter, 4)
    tiers = [Tier("quadratic", steps=15, time_limit=8.0), Tier("quadratic", steps=40, promote=0.3, time_limit=8.0)]
    s = Search(config(seeds, budget=12, tiers=tiers), store=tmp_path / "hang.db", evaluator=ev)
    ex = RayExecutor(ev, workers=1, grace=20.0)  # a fresh worker needs a few s to import torch (more on a loaded machine)
    try:
        run = s.run(executor=ex)
    finally:
        ex.close()
    hist = run.history()
    assert len(hist) == 12
    timeouts = [f for f in run.store.failures() if f["kind"] == "timeout"]
    assert len(timeouts) == 1
    hung = [r for r in hist if r["error"] and "timed out" in r["error"]]
    assert len(hung) == 1 and hung[0]["fitness"] == math.inf
