"""Throughput of batched evaluation against ordinary training loops, on every proxy task.

For each task, three ways, in this process:
  batched    — one ``optdisco.evaluate.run_members`` call: AdamW (the library program) on M = 16
               members (8 learning rates × 2 seeds) for the task's proxy steps, held-out loss at the end;
  sequential — 16 ordinary loops: ``task.make_module(seed)``, ``torch.optim.AdamW`` with the same
               schedule through ``LambdaLR``, ``task.module_loss`` + backward + step, then the held-out loss.
  one model  — an arithmetic reference, not a way to train 16 members: one ordinary loop of a single
               model whose batch is 16 × the task's, for the same steps; it does the members'
               forward/backward arithmetic in the largest, most efficient products, so the
               sequential / one-model ratio is about as much as batching 16 members can gain
               where that arithmetic dominates (counted as 16 member-steps a step; a batched
               run can exceed it only by computing differently from the ordinary model).
It prints member-steps per second of each way (best of ``--repeats`` interleaved runs), the
batched / sequential ratio (goal: ≥ 3× on a CPU, ≥ 20× on a GPU), the sequential / one-model ratio,
the largest difference between the two ways' final held-out losses (they train the same members),
and the wall time of one full ``evaluate(adamw, task)`` (grid, extension and all; goal for the
default proxy, mlp: under 10 s on the project's 2-core CPU).

    python benchmarks/evaluate_throughput.py [--tasks mlp,lm] [--steps N] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from optdisco import library, proxies
from optdisco.dsl import compile_program
from optdisco.evaluate import Schedule, evaluate, lr_grid, run_members

def adamw_program():
    return library.load("adamw")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def batched(fn, task, lrs, seeds, steps, device, schedule, hyper):
    sync(device)
    t0 = time.perf_counter()
    run = run_members(fn, task, lrs, seeds, steps, schedule=schedule, hyper=hyper, device=device)
    sync(device)
    return time.perf_counter() - t0, run.final


def train_module(task, seed, lr, steps, device, schedule, hyper):
    """An ordinary training loop: member ``seed``'s module, torch.optim.AdamW, the same schedule."""
    module = task.make_module(seed, device=device)
    opt = torch.optim.AdamW(
        module.parameters(), lr=lr, betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"], weight_decay=hyper["wd"]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule.factor(min(k + 1, steps), steps))
    for step in range(steps):
        loss = task.module_loss(module, step, seed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return module


def sequential(task, lrs, seeds, steps, device, schedule, hyper):
    finals = []
    sync(device)
    t0 = time.perf_counter()
    for lr, seed in zip(lrs, seeds):
        module = train_module(task, seed, lr, steps, device, schedule, hyper)
        with torch.no_grad():
            params = {n: p.detach()[None] for n, p in module.named_parameters()}
            finals.append(float(task.eval_loss(params, [seed])[0]))
    sync(device)
    return time.perf_counter() - t0, finals


def one_model(task, steps, device, schedule, hyper, members):
    """One module at ``members`` × the task's batch: the members' arithmetic without their overheads."""
    big = type(task)(size=task.size, **{**task.options, "batch": task.batch * members})
    sync(device)
    t0 = time.perf_counter()
    train_module(big, 0, 1e-3, steps, device, schedule, hyper)
    sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(proxies.names()))
    ap.add_argument("--steps", type=int, default=None, help="steps per member (default: each task's proxy steps)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both ways (default 1, "
                    "as evaluate() uses; 0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-evaluate", action="store_true", help="skip the full-evaluation timing")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each way, interleaved; the best counts")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    program = adamw_program()
    fn = compile_program(program)
    hyper = {k: v for k, v in program.hyper_defaults.items() if k != "lr"}
    schedule = Schedule()
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"M = 16 members (8 LRs x 2 seeds), AdamW")
    print(f"{'task':<10} {'steps':>6} {'batched m-steps/s':>18} {'sequential m-steps/s':>21} {'ratio':>7} "
          f"{'one-model m-steps/s':>20} {'seq/1-model':>12} {'max |Δ final|':>14} {'evaluate() s':>13}")
    for name in args.tasks.split(","):
        task = proxies.get(name, size="proxy")
        steps = args.steps or task.steps
        grid = lr_grid(program.hyper_defaults["lr"])
        lrs = [lr for lr in grid for _ in (0, 1)]
        seeds = [s for _ in grid for s in (0, 1)]
        batched(fn, task, lrs[:2], seeds[:2], 2, args.device, schedule, hyper)  # warm caches
        tb = ts = to = float("inf")
        for _ in range(args.repeats):  # interleaved, best of each: the ways see the same machine
            t, fb = batched(fn, task, lrs, seeds, steps, args.device, schedule, hyper)
            tb = min(tb, t)
            t, fs = sequential(task, lrs, seeds, steps, args.device, schedule, hyper)
            ts = min(ts, t)
            to = min(to, one_model(task, steps, args.device, schedule, hyper, len(lrs)))
        work = len(lrs) * steps
        diff = max(abs(a - b) for a, b in zip(fb, fs))
        te = float("nan")
        if not args.no_evaluate:
            te = evaluate(program, task, device=args.device, threads=threads).wall_time
        print(f"{name:<10} {steps:>6} {work / tb:>18.0f} {work / ts:>21.0f} {ts / tb:>6.1f}x "
              f"{work / to:>20.0f} {ts / to:>11.1f}x {diff:>14.2e} {te:>13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
