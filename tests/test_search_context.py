"""A found program travels with the context it was scored in: the tuned learning rate, the
schedule and the training length (issue 12, finding 1)."""

import importlib.util
import statistics

import pytest
import torch

pytest.importorskip("optdisco.evaluate.protocol")

from optdisco import proxies  # noqa: E402
from optdisco.evaluate.schedule import Schedule  # noqa: E402
from optdisco.search import Run  # noqa: E402
from optdisco.search.cli import main  # noqa: E402
from optdisco.search.context import tuned_context  # noqa: E402
from search_toy import toml_config  # noqa: E402

CONFIG = toml_config(6, ["sgd", "adam"], 4, 2, [(60, 2, 3), (60, 2, 3)], seed=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctx")
    (folder / "c.toml").write_text(CONFIG)
    path = folder / "run.db"
    assert main(["search", "--config", str(folder / "c.toml"), "--store", str(path), "--no-progress",
                 "--no-report"]) == 0
    return path


def _load_module(path):
    spec = importlib.util.spec_from_file_location("found_module", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_best_carries_the_tuned_lr_and_schedule(store):
    run = Run(store)
    best = run.best(1)[0]
    ctx = best["context"]
    result = run.store.evaluation(best["id"], best["tier_reached"])["result"]
    assert ctx["lr"] == result["best_lr"] and ctx["steps"] == 60 and ctx["task"] == "quadratic"
    assert ctx["schedule"] == {"name": "warmup_cosine", "warmup": 0.05, "floor": 0.01, "steps": 60}
    run.close()


def test_exported_winner_trains_in_plain_torch_to_the_recorded_loss(store, tmp_path, capsys):
    out = tmp_path / "found.py"
    assert main(["export", str(store), "--rank", "1", "-o", str(out)]) == 0
    assert "tuned" in capsys.readouterr().err
    run = Run(store)
    best = run.best(1)[0]
    run.close()
    ctx = best["context"]
    mod = _load_module(out)
    cls = mod.DiscoveredOptimizer
    assert cls.HYPERS["lr"] == ctx["lr"] != best["program"].hyper_defaults["lr"]
    assert "Found with: lr" in cls.__doc__ and "cosine decay to 1%" in cls.__doc__
    assert mod.TUNED_STEPS == 60

    task = proxies.get("quadratic")
    finals = []
    for seed in (0, 1):  # the tier's seeds
        module = task.make_module(seed)
        opt = cls(module.parameters())  # the defaults: nothing copied by hand
        sched = mod.lr_schedule(opt)
        for step in range(mod.TUNED_STEPS):
            loss = task.module_loss(module, step, seed)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        params = {n: p.detach()[None] for n, p in module.named_parameters()}
        finals.append(float(task.eval_loss(params, [seed])[0]))
    spread = max(finals) - min(finals)
    assert abs(statistics.median(finals) - best["fitness"]) <= max(spread, 1e-6 * best["fitness"])
    assert statistics.median(finals) == pytest.approx(best["fitness"], rel=1e-3)


def test_the_exported_schedule_is_the_evaluation_schedule():
    from optdisco.dsl import export_python

    src = export_python("hyper lr = 0.1\nw = w - lr * g\n", tuned={
        "defaults": {"lr": 0.5}, "schedule": {"steps": 37, "warmup": 0.1, "floor": 0.01}, "about": "test"})
    ns = {}
    exec(compile(src, "exported", "exec"), ns)  # noqa: S102 - our own generated module
    p = torch.nn.Parameter(torch.zeros(2))
    opt = ns["DiscoveredOptimizer"]([p])
    sched = ns["lr_schedule"](opt)
    seen = []
    for _ in range(37):
        seen.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * f for f in Schedule(warmup=0.1).factors(37)], rel=1e-12)


def test_tuned_context_reads_per_task_entries():
    one = {"best_lr": 0.01, "steps": 10, "schedule": {"warmup": 0.05, "floor": 0.01}, "task": "a"}
    two = dict(one, best_lr=0.02, task="b")
    ctx = tuned_context({"tasks": {"a": one, "b": two}})
    assert ctx["tasks"]["a"]["lr"] == 0.01 and ctx["tasks"]["b"]["lr"] == 0.02 and "lr" not in ctx
    assert tuned_context({"best_lr": None}) is None and tuned_context({"loss": 1.0}) is None
