"""The multi-objective benchmark: searches for optimizers that are good at something besides loss,
their Pareto fronts, and their finalists validated on held-out tasks.

1. A search seeded by the library with ``--objectives loss,memory`` and one with ``loss,quant``
   (``optdisco.search.pareto``), ``--budget`` evaluations each, on the default suite funnel.
2. Finalists: from the memory search, the front's programs with at most ``--max-memory`` (2)
   bytes of state per element, lowest loss first; from the quant search, the front's programs
   with the lowest loss. At most ``--finalists`` of each; front points that are reference
   programs themselves (seeds) are left to the reference rows.
3. Each finalist and each reference (tuned AdamW, Adafactor, 8-bit Adam, SinkGD, SWAN, Lion) on
   every held-out task: the learning rate tuned on seed 0, then ``--seeds`` seeds rerun at it,
   the trained weights quantized to int8 and int4 after training (``evaluate(quantize=...)``).
4. Two tables and two verdicts:

   - **memory goal**: a program with ≤ 2 bytes of state per element whose held-out loss is
     better than or within the seed spread of tuned AdamW's (``|Δ| ≤ max(spreads)``, as
     ``optdisco validate`` judges) on at least 3/4 of the held-out tasks;
   - **quantization goal**: a program that ties or beats AdamW in full precision (same rule)
     and whose int4 held-out loss rises less (``int4 / full precision``, median over seeds) than
     AdamW's, on at least 3/4 of the held-out tasks.

Everything is kept in ``--dir``: the two run stores (a rerun resumes them) and
``heldout.json`` (each finished (program, task) validation, written as it completes), so the
benchmark may span sessions and a crash loses at most the validation in flight.

    python benchmarks/pareto.py [--budget 600] [--workers 2] [--dir pareto-runs]
    python benchmarks/pareto.py --task quadratic --heldout memory --budget 12 --executor local \\
        --validate-steps 30 --seeds 2 --dir /tmp/pareto-smoke        # a smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

SEEDS = ("adamw", "adam", "lion", "adafactor", "adam8bit", "sinkgd", "swan", "sgd", "momentum", "signum", "rmsprop",
         "muon")
REFERENCES = ("adamw", "adafactor", "adam8bit", "sinkgd", "swan", "lion")


def run_search(path: Path, objectives: str, args):
    from optdisco.search import Run, Search, SearchConfig

    if path.exists():
        run = Run(path)
        done, finished = run.stats()["evaluations"], run.store.get_meta("finished")
        if done >= args.budget and finished:
            print(f"{objectives}: {path} already holds {done} evaluations", file=sys.stderr)
            return run
        run.close()
        search = Search.resume(path, budget=args.budget, workers=args.workers, executor=args.executor)
    else:
        kw = dict(budget=args.budget, workers=args.workers, executor=args.executor, seed=args.seed,
                  seed_programs=tuple(args.seed_programs.split(",")), objectives=objectives,
                  population=args.population, tournament=args.tournament)
        if args.task:
            kw["task"] = args.task
        if args.heldout:
            kw["heldout"] = tuple(args.heldout.split(","))
        search = Search(SearchConfig(**kw), store=path)
    t0, last = time.time(), [0.0]

    def progress(p):
        if time.time() - last[0] > 30:
            last[0] = time.time()
            print(f"  {objectives}: {p.evaluations}/{p.budget} evaluations, {time.time() - t0:.0f} s", file=sys.stderr)

    search.on_progress = progress
    return search.run()


def finalists(run, kind: str, args) -> list[tuple[str, str]]:
    """(label, program text) of the finalists of a run (module docstring, step 2)."""
    from optdisco.search.front import front

    rows = front(run)
    last = len(run.config.tiers) - 1
    rows = [r for r in rows if r["tier"] == last]
    if kind == "memory":
        rows = [r for r in rows if r["values"].get("memory", math.inf) <= args.max_memory]
    rows = [r for r in rows if r["name"] not in REFERENCES]  # those are validated as references anyway
    return [(f"{kind}-front-{r['point']}" + (f"-{r['name']}" if r["name"] else ""), r["text"])
            for r in rows[: args.finalists]]


def validate_one(program, task: str, args) -> dict:
    """Tune on seed 0, rerun ``--seeds`` seeds at the best LR with int8/int4 quantization."""
    from optdisco.evaluate import evaluate

    common = dict(threads=1)
    if args.validate_steps:
        common["steps"] = args.validate_steps
    tune = evaluate(program, task, seeds=(0,), **common)
    if tune.best_lr is None:
        return dict(failed=tune.reason or "no learning rate finished")
    rerun = evaluate(program, task, lrs=[tune.best_lr], seeds=tuple(range(args.seeds)), extend=False,
                     hyper=tune.best_hyper or None, quantize=("int8", "int4"), **common)
    finals = [m.final_loss for m in rerun.members]
    if not all(math.isfinite(f) for f in finals):
        return dict(failed=rerun.reason or "failed on some seed")
    rises = {fmt: statistics.median(m.quantized_loss.get(fmt, math.inf) / m.final_loss for m in rerun.members)
             for fmt in ("int8", "int4")}
    return dict(lr=tune.best_lr, finals=finals, median=rerun.fitness, spread=max(finals) - min(finals),
                int8=rises["int8"], int4=rises["int4"])


def validate_all(programs: list[tuple[str, str]], tasks: list[str], cache: Path, args) -> dict:
    """``{label: {task: row}}``, read from and written to ``cache`` as each row finishes."""
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for label, program in programs:
        for task in tasks:
            key = f"{label}\t{task}"
            if key in done:
                continue
            print(f"  validating {label} on {task}", file=sys.stderr)
            done[key] = validate_one(program, task, args)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1))
            tmp.replace(cache)
    out: dict = {}
    for key, row in done.items():
        label, task = key.split("\t")
        out.setdefault(label, {})[task] = row
    return out


def verdict(row: dict, ref: dict) -> str:
    if "failed" in row or "failed" in ref:
        return "failed"
    diff = row["median"] - ref["median"]
    if abs(diff) <= max(row["spread"], ref["spread"]):
        return "tie"
    return "better" if diff < 0 else "worse"


def memory_table(labels, rows, tasks, memory) -> tuple[str, list[str]]:
    head = "| program | state B/elem | " + " | ".join(f"{t}: loss / AdamW (spread) verdict" for t in tasks) + " | ≤ AdamW |"
    lines = [head, "|" + " --- |" * (len(tasks) + 3)]
    met = []
    need = math.ceil(0.75 * len(tasks))
    for label in labels:
        cells, ok = [], 0
        for t in tasks:
            r, ref = rows[label][t], rows["adamw"][t]
            v = verdict(r, ref)
            ok += v in ("tie", "better")
            cells.append("failed" if v == "failed" else f"{r['median'] / ref['median']:.3f} ({r['spread'] / ref['median']:.3f}) {v}")
        lines.append(f"| {label} | {memory[label]:.2f} | " + " | ".join(cells) + f" | {ok}/{len(tasks)} |")
        if label not in REFERENCES and memory[label] <= 2.0 and ok >= need:
            met.append(label)
    return "\n".join(lines), met


def quant_table(labels, rows, tasks) -> tuple[str, list[str]]:
    head = "| program | " + " | ".join(f"{t}: loss / AdamW, int4 rise (AdamW's)" for t in tasks) + " | goal tasks |"
    lines = [head, "|" + " --- |" * (len(tasks) + 2)]
    met = []
    need = math.ceil(0.75 * len(tasks))
    for label in labels:
        cells, ok = [], 0
        for t in tasks:
            r, ref = rows[label][t], rows["adamw"][t]
            v = verdict(r, ref)
            if v == "failed":
                cells.append("failed")
                continue
            good = v in ("tie", "better") and r["int4"] < ref["int4"]
            ok += good
            cells.append(f"{r['median'] / ref['median']:.3f} {v}, {r['int4']:.4f} ({ref['int4']:.4f})")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ok}/{len(tasks)} |")
        if label not in REFERENCES and ok >= need:
            met.append(label)
    return "\n".join(lines), met


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=600, help="evaluations per search (default 600)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default="ray", choices=("ray", "local"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed-programs", default=",".join(SEEDS))
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--tournament", type=int, default=6)
    ap.add_argument("--task", help="one proxy task instead of the default suite (smoke tests)")
    ap.add_argument("--heldout", help="held-out tasks (default optdisco.proxies.HELDOUT)")
    ap.add_argument("--finalists", type=int, default=3)
    ap.add_argument("--max-memory", type=float, default=2.0, help="state bytes per element of a memory finalist")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per held-out validation")
    ap.add_argument("--validate-steps", type=int, help="steps of the held-out runs (default the task's)")
    ap.add_argument("--dir", default="pareto-runs")
    args = ap.parse_args(argv)

    from optdisco import library
    from optdisco.dsl import parse
    from optdisco.dsl.memory import state_bytes
    from optdisco.proxies.suites import HELDOUT
    from optdisco.search.front import table

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    tasks = args.heldout.split(",") if args.heldout else list(HELDOUT)
    runs = {kind: run_search(folder / f"{kind}.db", f"loss,{kind}", args) for kind in ("memory", "quant")}
    chosen = {kind: finalists(run, kind, args) for kind, run in runs.items()}
    programs = [(n, library.load(n).to_text()) for n in REFERENCES] + chosen["memory"] + chosen["quant"]
    rows = validate_all(programs, tasks, folder / "heldout.json", args)
    memory = {label: state_bytes(parse(text)) for label, text in programs}

    for kind, run in runs.items():
        print(f"\n## Pareto front: loss, {kind} ({run.path}; `optdisco export {run.path} --front`)\n")
        print(table(run))
    labels_m = list(REFERENCES) + [label for label, _ in chosen["memory"]]
    text, met = memory_table(labels_m, rows, tasks, memory)
    print(f"\n## Memory goal on held-out {', '.join(tasks)} ({args.seeds} seeds; state bytes per element on the "
          "reference model of optdisco.dsl.memory)\n")
    print(text)
    print(f"\nmemory goal (≤ 2 B/elem, tie or better than AdamW on ≥ {math.ceil(0.75 * len(tasks))}/{len(tasks)} "
          f"held-out tasks): {'met by ' + ', '.join(met) if met else 'not met'}"
          + ("" if chosen["memory"] else f" (the memory front has no program with ≤ {args.max_memory:g} B/elem)"))
    labels_q = list(REFERENCES) + [label for label, _ in chosen["quant"]]
    text, met = quant_table(labels_q, rows, tasks)
    print(f"\n## Quantization goal on held-out {', '.join(tasks)} (int4 rise = held-out loss of the int4 weights / "
          "full precision, median over seeds)\n")
    print(text)
    print(f"\nquantization goal (ties or beats AdamW in full precision and rises less under int4 on "
          f"≥ {math.ceil(0.75 * len(tasks))}/{len(tasks)} held-out tasks): {'met by ' + ', '.join(met) if met else 'not met'}")
    for label, program in chosen["memory"] + chosen["quant"]:
        print(f"\n{label}:\n{program}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
