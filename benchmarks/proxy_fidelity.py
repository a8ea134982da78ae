"""Proxy fidelity: does a proxy (or a suite of them) rank optimizers as the held-out tasks do?

For about ten library methods, each proxy task's fitness (the search's last-tier protocol: 8 LRs,
2 seeds) and each held-out task's fitness (the standard protocol with 3 seeds) are divided by tuned
AdamW's on the same task. Printed:

- per proxy: Kendall's τ between the methods' ratios there and their held-out suite score
  (``optdisco.evaluate.suite.aggregate`` over the held-out tasks), τ against each held-out task,
  and the spread that separates methods (max/min ratio) against the median seed spread;
- per suite (the default one, every proxy together, and each suite of 3–5 proxies): τ of its
  aggregate with the held-out score, for the documented rule and for the plain geometric mean.

    python benchmarks/proxy_fidelity.py [--workers 2] [--methods adamw,adam,...] [--json out.json]

Numbers are deterministic (the protocol is); the run takes about 5–10 minutes on 2 idle cores.
Choosing the default suite by the τ printed here would let held-out information into a design
choice; README says how the default suite was chosen and reports these figures beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from optdisco.evaluate.rank import kendall_tau

METHODS = ("adamw", "adam", "nadam", "sgd", "momentum", "lion", "signum", "rmsprop", "adafactor", "muon")


def _job(args):
    method, task, seeds = args
    from optdisco.evaluate import evaluate

    r = evaluate(method, task, seeds=tuple(range(seeds)), threads=1)
    finals = [m.final_loss for m in r.best_members()]
    spread = max(finals) - min(finals) if finals and all(math.isfinite(f) for f in finals) else math.inf
    return method, task, r.fitness, spread, r.wall_time


def _fmt(x: float, w: int = 6) -> str:
    return f"{x:{w}.3f}" if math.isfinite(x) else " " * (w - 3) + "inf"


def main(argv=None) -> int:
    from optdisco import proxies
    from optdisco.evaluate.suite import aggregate, geometric_mean

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--proxies", default="", help="candidate proxies (default: every task but the held-out ones)")
    ap.add_argument("--json", metavar="PATH", help="also write every number here")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    heldout = list(proxies.HELDOUT)
    cands = [t for t in (args.proxies.split(",") if args.proxies else proxies.names()) if t and t not in heldout]
    cands = [t for t in cands if t != "lm"]
    jobs = [(m, t, 2) for t in cands for m in methods] + [(m, t, 3) for t in heldout for m in methods]
    t0 = time.time()
    fit, spread, wall = {}, {}, {}
    with ProcessPoolExecutor(args.workers) as pool:
        for m, t, f, s, w in pool.map(_job, jobs):
            fit[(m, t)], spread[(m, t)], wall[(m, t)] = f, s, w
            print(f"  {t:12s} {m:10s} {f:.5g} (seed spread {s:.3g}, {w:.1f} s)", file=sys.stderr)

    def ratio(m, t):
        return fit[(m, t)] / fit[("adamw", t)]

    held_score = {m: aggregate({t: ratio(m, t) for t in heldout}) for m in methods}
    print(f"\nproxy fidelity: {len(methods)} methods ({', '.join(methods)}); held-out suite {', '.join(heldout)}; "
          f"{time.time() - t0:.0f} s\n")
    print("held-out ratios to tuned AdamW (3 seeds) and held-out suite score:")
    print("method      " + " ".join(f"{t:>11s}" for t in heldout) + "   score")
    for m in methods:
        print(f"{m:11s} " + " ".join(f"{_fmt(ratio(m, t), 11)}" for t in heldout) + f"  {_fmt(held_score[m])}")

    print("\nper proxy: τ with the held-out score, τ with each held-out task, method spread vs seed spread, s/eval")
    print("proxy        τ(score) " + " ".join(f"{'τ ' + t:>12s}" for t in heldout) + "  max/min ratio  seed/adamw  time")
    rows = {}
    for p in cands:
        rs = [ratio(m, p) for m in methods]
        tau = kendall_tau(rs, [held_score[m] for m in methods])
        per = [kendall_tau(rs, [ratio(m, h) for m in methods]) for h in heldout]
        finite = [r for r in rs if math.isfinite(r)]
        sep = max(finite) / min(finite) if finite else math.nan
        seed_rel = statistics.median(spread[(m, p)] / fit[("adamw", p)] for m in methods if math.isfinite(spread[(m, p)]))
        secs = statistics.median(wall[(m, p)] for m in methods)
        rows[p] = dict(tau=tau, per=per, sep=sep, seed=seed_rel, secs=secs)
        print(f"{p:12s} {_fmt(tau, 8)} " + " ".join(f"{_fmt(x, 12)}" for x in per)
              + f"  {_fmt(sep, 13)}  {_fmt(seed_rel, 10)}  {secs:4.1f}")

    def suite_tau(suite, rule):
        scores = [rule({t: ratio(m, t) for t in suite}) for m in methods]
        return kendall_tau(scores, [held_score[m] for m in methods])

    print("\nsuites: τ of the suite score with the held-out score (documented rule / plain geometric mean)")
    default = [t for t in proxies.SUITE if t in cands]
    named = [("default " + ",".join(default), default), ("all proxies", cands)]
    for name, suite in named:
        print(f"  {name:48s} {_fmt(suite_tau(suite, aggregate))} / {_fmt(suite_tau(suite, geometric_mean))}")
    subsets = []
    for k in (3, 4, 5):
        for suite in itertools.combinations(cands, k):
            subsets.append((suite_tau(suite, aggregate), suite_tau(suite, geometric_mean), suite))
    if subsets:
        taus = sorted(s[0] for s in subsets)
        print(f"  every suite of 3–5 proxies ({len(subsets)}): τ median {statistics.median(taus):.3f}, "
              f"range {taus[0]:.3f} … {taus[-1]:.3f}")
        gm_better = sum(1 for a, g, _ in subsets if g > a)
        print(f"  the plain geometric mean ranks better than the documented rule in {gm_better} of {len(subsets)} suites")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(methods=methods, heldout=heldout, proxies=cands,
                           fitness={f"{m}|{t}": v for (m, t), v in fit.items()},
                           spread={f"{m}|{t}": v for (m, t), v in spread.items()},
                           held_score=held_score, rows=rows), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
