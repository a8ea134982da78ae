"""The evaluation protocol: schedule, grid, batched = separate, determinism, failures, time limit,
Hutchinson estimates, JSON round trip, validation, and that the tasks tell AdamW from plain SGD."""

from __future__ import annotations

import argparse
import copy
import json
import math
import types
import warnings

import pytest
import torch

from optdisco import proxies
from optdisco.dsl import compile_program
from optdisco.evaluate import (
    WORST, Result, Schedule, evaluate, extend, hutchinson, lr_grid, run_members,
)
from optdisco.evaluate import protocol as protocol_mod
from optdisco.evaluate import runner as runner_mod
from optdisco.evaluate.validate import speedup, steps_to_reach, validate

ADAMW = """# AdamW
hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01
state m = zeros, v = zeros
m = ema(m, g, beta1)
v = ema(v, g * g, beta2)
w = w - lr * wd * w
w = w - lr * (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps)
"""

SGD = """# SGD
hyper lr = 0.1
w = w - lr * g
"""

NAN_PROGRAM = """# broken: every update is NaN
hyper lr = 0.1
w = w - lr * sqrt(-abs(g) - 1)
"""

HESS_PROGRAM = """# diagonal Newton-like step on a Hutchinson estimate
hyper lr = 0.1, eps = 1e-2
state h = zeros
h = ema(h, abs(hess_diag), 0.9)
w = w - lr * g / (h / (1 - 0.9 ** t) + eps)
"""


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def quad():
    return proxies.get("quadratic", size="proxy")


# ---------------------------------------------------------------- schedule and grid

def test_schedule_equals_torch_linear_warmup_then_cosine_to_one_percent():
    steps = 100
    s = Schedule()
    w = s.warmup_steps(steps)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - w, eta_min=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[w - 1])
        ref = []
        for _ in range(steps):
            ref.append(opt.param_groups[0]["lr"])
            opt.step()
            seq.step()
    assert w == 5
    assert s.factors(steps) == pytest.approx(ref, abs=1e-12)
    assert max(s.factors(steps)) == 1.0 and s.factor(steps, steps) == pytest.approx(0.01)
    assert Schedule(warmup=0.5).warmup_steps(2) == 1  # the last step always decays
    with pytest.raises(ValueError, match="at most 1%"):
        Schedule(floor=0.1)


def test_lr_grid_spans_three_decades_in_eight_log_spaced_points_around_default():
    g = lr_grid(1e-3)
    assert len(g) == 8
    assert g[-1] / g[0] == pytest.approx(1000.0)
    assert math.sqrt(g[0] * g[-1]) == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(g, g[1:])]
    assert ratios == pytest.approx([10 ** (3 / 7)] * 7)
    hi, lo = extend(g, "high", 4), extend(g, "low", 4)
    assert hi == pytest.approx([g[-1] * 10 ** (3 * k / 7) for k in range(1, 5)])
    assert lo == pytest.approx([g[0] / 10 ** (3 * k / 7) for k in range(4, 0, -1)])
    with pytest.raises(ValueError, match="positive"):
        lr_grid(0.0)


# ---------------------------------------------------------------- batched runs

def test_batched_members_equal_separate_runs(quad):
    lrs, seeds = [0.003, 0.03, 0.3], [0, 1]
    together = evaluate(ADAMW, quad, steps=30, lrs=lrs, seeds=seeds, extend=False)
    assert len(together.members) == 6 and not together.failures
    for m in together.members:
        alone = evaluate(ADAMW, quad, steps=30, lrs=[m.lr], seeds=[m.seed], extend=False)
        (a,) = alone.members
        assert a.final_loss == pytest.approx(m.final_loss, rel=1e-5)
        assert a.train_curve == pytest.approx(m.train_curve, rel=1e-5)


def test_batched_adamw_program_equals_torch_optim_adamw_with_the_schedule():
    """Independent reference: ordinary modules trained by torch.optim.AdamW + LambdaLR."""
    task = proxies.get("mlp", size="proxy")
    steps, lrs, seeds = 25, [1e-3, 1e-2], [0, 1]
    pairs = [(lr, s) for lr in lrs for s in seeds]
    run = run_members(compile_program(ADAMW), task, [p[0] for p in pairs], [p[1] for p in pairs], steps,
                      hyper={"wd": 0.01})
    schedule = Schedule()
    for i, (lr, seed) in enumerate(pairs):
        module = task.make_module(seed)
        opt = torch.optim.AdamW(module.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule.factor(min(k + 1, steps), steps))
        for step in range(steps):
            loss = task.module_loss(module, step, seed)
            assert loss.item() == pytest.approx(float(run.train[step, i]), rel=1e-4)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        params = {n: p.detach()[None] for n, p in module.named_parameters()}
        assert run.final[i] == pytest.approx(float(task.eval_loss(params, [seed])[0]), rel=1e-4)


@pytest.mark.parametrize(("task_name", "program"), [
    ("mlp", ADAMW), ("digits", "lion"), ("lm", ADAMW), ("mlp", HESS_PROGRAM),
])
def test_elementwise_programs_update_the_concatenated_parameters_as_each_apart(task_name, program):
    """One call on all of a member's parameters concatenated (the fast path) gives the numbers of
    one call per parameter, also when a member blows up and leaves the batch."""
    from optdisco.library import load

    task = proxies.get(task_name, size="proxy")
    together = compile_program(load(program) if program == "lion" else program)
    assert together.elementwise and len(task.param_shapes()) > 1
    apart = copy.copy(together)
    apart.elementwise = False
    lrs, seeds = [1e-3, 3e-3, 1e3], [0, 1, 2]  # the last member diverges within a few steps
    runs = [run_members(f, task, lrs, seeds, 6, dtype=torch.float64) for f in (together, apart)]
    a, b = runs
    assert a.failed_step == b.failed_step and a.reason == b.reason
    assert b.failed_step[2] is not None and b.failed_step[0] is None  # both paths were exercised
    assert torch.equal(a.train.isnan(), b.train.isnan())
    torch.testing.assert_close(a.train.nan_to_num(), b.train.nan_to_num(), rtol=1e-12, atol=0)
    assert a.final == pytest.approx(b.final, rel=1e-12)
    for name in b.params:
        assert a.params[name].shape == b.params[name].shape
        torch.testing.assert_close(a.params[name], b.params[name], rtol=1e-12, atol=1e-15, equal_nan=True)


def test_acts_elementwise_only_without_reductions_matrix_work_shape_reads_or_quantized_state():
    from optdisco.dsl.analysis import acts_elementwise
    from optdisco.dsl import parse
    from optdisco.library import load

    yes = [ADAMW, SGD, HESS_PROGRAM, "hyper lr = 0.1\nw = w - lr * where(abs(g) > 1, sign(g), clip(g, -1, 1))\n"]
    no = [
        "hyper lr = 0.1\nw = w - lr * g / (norm(g) + 1e-8)\n",             # a reduction
        "hyper lr = 0.1\nw = w - lr * orthogonalize(g)\n",                 # matrix work
        "hyper lr = 0.1\nw = w - lr * (g @ transpose(g)) @ g\n",           # a matrix product
        "hyper lr = 0.1\nif is_matrix:\n  w = w - lr * g\nelse:\n  w = w - 0.1 * lr * g\nend\n",  # a role read
        "hyper lr = 0.1\nw = w - lr * g / rows\n",                        # a shape read
        "hyper lr = 0.1\nstate m: q8 = zeros\nm = ema(m, g, 0.9)\nw = w - lr * m\n",  # quantized state
        "hyper lr = 0.1\nstate s = norm(g)\nw = w - lr * g / s\n",        # a reduction in an initialiser
    ]
    assert all(acts_elementwise(parse(text)) for text in yes)
    assert not any(acts_elementwise(parse(text)) for text in no)
    assert acts_elementwise(load("lion")) and not acts_elementwise(load("muon")) and not acts_elementwise(load("lamb"))


def test_an_if_on_the_learning_rate_runs_each_learning_rate_apart(quad):
    branchy = """# sign steps above lr 0.05, gradient steps below
hyper lr = 0.1
if lr > 0.05:
    w = w - lr * sign(g)
else:
    w = w - lr * g
end
"""
    r = evaluate(branchy, quad, steps=20, lrs=[0.01, 0.1], seeds=[0, 1], extend=False)
    assert not r.failures
    for lr in (0.01, 0.1):  # the condition reads the scheduled lr; alone, the batch agrees
        ref = evaluate(branchy, quad, steps=20, lrs=[lr], seeds=[0, 1], extend=False)
        assert [m.final_loss for m in r.at_lr(lr)] == pytest.approx([m.final_loss for m in ref.members], rel=1e-6)


def test_same_program_task_budget_and_seeds_give_the_same_result(quad):
    a = evaluate(ADAMW, quad, steps=40, points=4, seeds=(0, 1))
    b = evaluate(ADAMW, proxies.get("quadratic"), steps=40, points=4, seeds=(0, 1))
    assert a.outcome() == b.outcome()
    c = evaluate(ADAMW, quad, steps=40, points=4, seeds=(2, 3))
    assert c.outcome() != a.outcome()


# ---------------------------------------------------------------- failures

def _sgd_failure_step(task, lr, seed, steps, blowup=10.0):
    """First step whose training loss is non-finite or above blowup × the step-1 loss, by a plain loop."""
    module = task.make_module(seed)
    first = None
    schedule = Schedule()
    for step in range(steps):
        loss = task.module_loss(module, step, seed)
        value = loss.item()
        first = value if first is None else first
        if not math.isfinite(value) or value > blowup * abs(first):
            return step + 1
        module.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in module.parameters():
                p -= lr * schedule.factor(step + 1, steps) * p.grad
    return None


def test_diverging_members_are_masked_and_recorded_while_the_others_go_on(quad):
    steps = 40
    r = evaluate(SGD, quad, steps=steps, lrs=[0.05, 30.0], seeds=[0, 1], extend=False)
    bad = r.at_lr(30.0)
    assert all(m.failed and m.final_loss == math.inf for m in bad)
    for m in bad:
        assert m.failed_step == _sgd_failure_step(quad, 30.0, m.seed, steps)
        assert m.reason in ("loss above 10× initial", "non-finite loss")
    good = r.at_lr(0.05)
    alone = evaluate(SGD, quad, steps=steps, lrs=[0.05], seeds=[0, 1], extend=False)
    assert [m.final_loss for m in good] == pytest.approx([m.final_loss for m in alone.members], rel=1e-6)
    assert r.best_lr == 0.05 and r.fitness == pytest.approx(alone.fitness)
    assert r.member_steps == 2 * steps + sum(m.failed_step - 1 for m in bad)


def test_a_program_whose_every_member_fails_gets_the_worst_fitness_and_a_reason(quad):
    r = evaluate(NAN_PROGRAM, quad, steps=10, points=4, seeds=(0, 1))
    assert r.fitness == WORST and r.best_lr is None and not r.ok
    assert r.extended == "low" and len(r.lrs) == 6  # all failed: the grid goes down once
    assert all(m.reason == "non-finite loss" and m.failed_step == 2 for m in r.members)
    assert "all 12 members failed" in r.reason
    assert sorted([WORST, 1.0, 0.5])[-1] == r.fitness  # sorts after every real loss


def test_time_limit_stops_members_between_steps(quad, monkeypatch):
    clock = iter(range(10**6))  # a fake clock: each reading is one second later
    fake = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))
    monkeypatch.setattr(runner_mod, "time", fake)
    monkeypatch.setattr(protocol_mod, "time", fake)
    r = evaluate(ADAMW, quad, steps=50, lrs=[0.01, 0.1], seeds=[0], time_limit=5.5)
    # readings: 0 at the start, then 1, 2, … before steps 1, 2, …: step 6 sees 6 > 5.5
    assert all(m.reason == "time limit" and m.failed_step == 6 for m in r.members)
    assert r.fitness == WORST and r.extended is None and r.member_steps == 2 * 5
    monkeypatch.undo()
    r0 = evaluate(ADAMW, quad, steps=50, points=3, time_limit=0.0)
    assert r0.member_steps == 0 and all(m.reason == "time limit" for m in r0.members)


# ---------------------------------------------------------------- the LR grid in use

def test_best_lr_on_an_edge_is_flagged_and_the_grid_extended_once(quad):
    small = SGD.replace("lr = 0.1", "lr = 1e-6")  # the whole default grid is far too small
    r = evaluate(small, quad, steps=30, seeds=(0,))
    assert r.extended == "high" and len(r.lrs) == 12
    assert r.lrs[:8] == pytest.approx(lr_grid(1e-6)) and r.lrs[8:] == pytest.approx(extend(lr_grid(1e-6), "high", 4))
    assert r.edge == "high" and r.best_lr == r.lrs[-1]  # still too small: flagged
    assert r.lr_losses == sorted(r.lr_losses, reverse=True)
    big = SGD.replace("lr = 0.1", "lr = 300.0")  # only the lowest default point trains
    r = evaluate(big, quad, steps=30, seeds=(0,))
    assert r.extended == "low" and r.lrs[4:] == pytest.approx(lr_grid(300.0)) and r.edge is None
    assert r.best_lr == pytest.approx(lr_grid(300.0)[0])  # now inside the grid: not flagged
    assert r.fitness == min(r.lr_losses) and r.best_lr == r.lrs[r.lr_losses.index(r.fitness)]


# ---------------------------------------------------------------- Hutchinson

def test_hutchinson_estimate_equals_z_times_double_backward_hvp(quad):
    seeds, step = [0, 3], 7
    params = quad.init_params(seeds, dtype=torch.float64)
    est = hutchinson(quad, params, step, seeds)
    from optdisco.evaluate.hessian import rademacher

    z = rademacher(params, seeds, step)
    for i, seed in enumerate(seeds):
        module = quad.make_module(seed, dtype=torch.float64)
        ps = list(module.parameters())
        (g,) = torch.autograd.grad(quad.module_loss(module, step, seed), ps, create_graph=True)
        zi = z["weight"][i]
        (hz,) = torch.autograd.grad((g * zi).sum(), ps)
        assert torch.allclose(est["weight"][i], zi * hz, rtol=1e-6, atol=1e-9)
        assert set(zi.unique().tolist()) == {-1.0, 1.0}


def test_programs_reading_hess_diag_are_evaluated(quad):
    r = evaluate(HESS_PROGRAM, quad, steps=30, lrs=[0.01, 0.1], seeds=(0,), extend=False)
    assert r.ok and r.fitness < evaluate(HESS_PROGRAM, quad, steps=1, lrs=[0.01], seeds=(0,)).fitness


# ---------------------------------------------------------------- Result

def test_result_round_trips_through_strict_json(quad):
    r = evaluate(SGD, quad, steps=15, lrs=[0.05, 30.0], seeds=[0], extend=False)
    assert r.failures  # holds an inf final loss and NaN curve points
    text = json.dumps(r.to_dict(), allow_nan=False)
    back = Result.from_dict(json.loads(text))
    assert back.to_dict() == r.to_dict()
    assert back.members[1].final_loss == math.inf and back.fitness == r.fitness
    worst = evaluate(NAN_PROGRAM, quad, steps=3, points=2, seeds=(0,))
    assert Result.from_dict(json.loads(json.dumps(worst.to_dict(), allow_nan=False))).fitness == math.inf


def test_user_errors_are_clear(quad):
    with pytest.raises(ValueError, match="distinct"):
        evaluate(SGD, quad, seeds=(1, 1))
    with pytest.raises(ValueError, match="not hyperparameters"):
        evaluate(SGD, quad, hyper={"beta1": 0.9})
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(SGD, "no-such-task")
    with pytest.raises(KeyError, match="no library program"):
        evaluate("no_such_optimizer", quad)


# ---------------------------------------------------------------- the tasks measure something

@pytest.mark.parametrize("task,steps", [("mlp", 80), ("lm", 30)])
def test_tuned_adamw_beats_tuned_plain_sgd(task, steps):
    t = proxies.get(task, size="proxy")
    adamw = evaluate(ADAMW, t, steps=steps, points=4, seeds=(0,))
    sgd = evaluate(SGD, t, steps=steps, points=4, seeds=(0,))
    assert adamw.ok and sgd.ok
    assert adamw.fitness < sgd.fitness - 0.05, (adamw.summary(), sgd.summary())


# ---------------------------------------------------------------- validation

def test_speedup_is_steps_to_reach_the_common_loss_capped_at_four():
    steps = list(range(0, 101, 10))
    ref = [1.0 - s / 100 for s in steps]  # reaches 0 at step 100
    twice = [max(0.0, 1.0 - s / 50) for s in steps]  # reaches 0 at step 50
    assert steps_to_reach(steps, ref, 0.25) == pytest.approx(75.0)
    assert speedup(steps, ref, steps, twice) == pytest.approx(2.0)
    much = [1.0] + [0.0] * 10  # reaches 0 at step 10: 10× faster, capped
    assert speedup(steps, ref, steps, much) == 4.0
    worse = [1.0 - s / 200 for s in steps]  # ends at 0.5, which the reference reaches at step 50
    assert speedup(steps, ref, steps, worse) == pytest.approx(50 / 100)
    assert steps_to_reach(steps, worse, 0.1) == math.inf


def test_validate_prints_a_table_and_writes_a_plot(tmp_path):
    report = validate([SGD], baselines=[ADAMW], task="quadratic", size="proxy", seeds=2, steps=40, points=4,
                      plot=tmp_path / "curves.png")
    sgd, adamw = report.row("SGD"), report.row("AdamW")
    assert adamw.verdict == "reference" and adamw.speedup == 1.0
    assert len(sgd.finals) == 2 and sgd.median == pytest.approx(sum(sgd.finals) / 2)
    assert sgd.spread == pytest.approx(abs(sgd.finals[0] - sgd.finals[1]))
    assert sgd.best_lr == sgd.tune.best_lr and sgd.tune.seeds == [0]
    from optdisco.evaluate.validate import median_curve

    expect = speedup(adamw.rerun.eval_steps, median_curve(adamw.rerun), sgd.rerun.eval_steps, median_curve(sgd.rerun))
    assert sgd.speedup == pytest.approx(expect)
    diff = sgd.median - adamw.median
    within = abs(diff) <= max(sgd.spread, adamw.spread)
    assert sgd.verdict == ("tie (within seed spread)" if within else "better" if diff < 0 else "worse")
    table = report.table()
    assert "SGD" in table and "AdamW" in table and "reference" in table
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_validate_and_tasks(tmp_path, capsys):
    from optdisco.evaluate import cli as cli_validate
    from optdisco.proxies import cli as cli_tasks

    parser = argparse.ArgumentParser(prog="optdisco")
    sub = parser.add_subparsers()
    cli_validate.register(sub)
    cli_tasks.register(sub)
    (tmp_path / "adamw.opt").write_text(ADAMW)
    (tmp_path / "sgd.opt").write_text(SGD)
    plot = tmp_path / "v.png"
    args = parser.parse_args([
        "validate", str(tmp_path / "sgd.opt"), "--baselines", str(tmp_path / "adamw.opt"), "--task", "quadratic",
        "--size", "proxy", "--seeds", "2", "--steps", "20", "--points", "3", "--plot", str(plot), "--quiet",
        "--json", str(tmp_path / "r.json"),
    ])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "sgd" in out and "adamw" in out and "reference" in out and plot.exists()
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["name"] == "sgd"
    args = parser.parse_args([  # library programs, the default baselines
        "validate", "sgd", "--task", "quadratic", "--size", "proxy", "--seeds", "2", "--steps", "20",
        "--points", "3", "--plot", str(tmp_path / "lib.png"), "--quiet",
    ])
    assert args.baselines == "adamw,lion,muon" and args.func(args) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[3:] if line.strip() and not line.startswith("plot")]
    assert rows[:4] == ["sgd", "adamw", "lion", "muon"] and (tmp_path / "lib.png").exists()
    bad = parser.parse_args(["validate", "no_such_optimizer", "--baselines", "", "--task", "quadratic"])
    assert bad.func(bad) == 2
    assert "no library program" in capsys.readouterr().err
    args = parser.parse_args(["tasks"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name in proxies.names():
        assert name in out


# ---------------------------------------------------------------- the allocator setting

FAULTS = """
import platform, resource, sys, torch
from optdisco.evaluate import allocator, run_members
from optdisco.dsl import compile_program
from optdisco import proxies

def faults():
    for _ in range(2):  # warm: the first allocation of each size faults its pages in anyway
        torch.empty(12 << 20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # 48 MB, above glibc's largest dynamic mmap threshold (32 MB)
        torch.empty(12 << 20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
if sys.argv[1] == "run":
    run_members(compile_program("hyper lr = 0.1\\nw = w - lr * g\\n"), proxies.get("quadratic"), [0.1], [0], 2)
else:
    allocator.retain_freed_memory()
print(plain, faults())
"""


@pytest.mark.skipif(
    __import__("platform").system() != "Linux" or __import__("platform").libc_ver()[0] != "glibc",
    reason="the setting is glibc's",
)
@pytest.mark.parametrize("how", ["direct", "run"])
def test_cpu_runs_keep_freed_memory_instead_of_faulting_fresh_pages(how):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FAULTS, how], capture_output=True, text=True, check=True)
    plain, retained = map(int, out.stdout.split())
    assert plain > 5 * 10_000  # 5 × 12,288 fresh 4 KiB pages under glibc's defaults
    assert retained < plain / 20
