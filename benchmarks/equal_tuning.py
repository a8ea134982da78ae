"""What equal tuning changes for Muon on the recurrent tasks: tuned Muon with its
``adam_lr_ratio`` fixed at the default (lr alone tuned) against the library's Muon, which
declares ``adam_lr_ratio`` tuned (a Latin hypercube over lr and the ratio, the same 8 trials),
each as a ratio to tuned AdamW's held-out loss, seeds 0–2.

    python benchmarks/equal_tuning.py [--tasks rnn,gru]
"""

from __future__ import annotations

import argparse
import dataclasses

from optdisco import library
from optdisco.dsl.program import Program
from optdisco.evaluate import evaluate


def untuned(p: Program) -> Program:
    return dataclasses.replace(p, hypers=tuple(dataclasses.replace(h, tune=None) for h in p.hypers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="rnn,gru")
    args = ap.parse_args()
    muon = library.load("muon")
    for task in args.tasks.split(","):
        ref = evaluate("adamw", task, seeds=(0, 1, 2))
        print(f"{task}: tuned AdamW {ref.fitness:.4f} ({len(ref.members) // 3} trials)")
        for name, prog in (("muon, lr tuned", untuned(muon)), ("muon, lr and adam_lr_ratio tuned", muon)):
            r = evaluate(prog, task, seeds=(0, 1, 2))
            finals = [round(m.final_loss, 3) for m in r.best_members()]
            print(f"  {name}: {r.fitness:.4f} = {r.fitness / ref.fitness:.2f}× AdamW, seeds {finals}, "
                  f"lr {r.best_lr:.3g} {r.best_hyper or ''} ({len(r.members) // 3} trials)")


if __name__ == "__main__":
    main()
