"""Does the cost objective rank programs as their measured step times do?

For each library program: the estimated bytes moved and flops per element of one step
(``optdisco.dsl.cost``) on the reference model of ``optdisco.dsl.memory``, and the measured time
of one step of the exported optimizer (``to_optimizer``, default eager path) on that model's
parameters — best of ``--repeats`` timed steps after ``--warmup`` untimed ones. Prints a table
and Kendall's τ between each estimate (bytes, flops, and bytes + flops / ``--flops-per-byte``)
and the measured times: the rank agreement the cost objective can be trusted to.

    python benchmarks/cost_rank.py [--programs adamw,lion,...] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time

from optdisco.evaluate.rank import kendall_tau


def step_time(program, repeats: int, warmup: int) -> float:
    import torch

    from optdisco.dsl import to_optimizer
    from optdisco.dsl.memory import REFERENCE_MODEL

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.1) for _, shape, _ in REFERENCE_MODEL]
    groups = [{"params": [p], "role": role} for p, (_, _, role) in zip(params, REFERENCE_MODEL)]
    quantized = any(s.storage != "float" for s in program.states)
    opt = to_optimizer(program, groups, foreach=False if quantized else None)
    grads = [torch.randn(p.shape, generator=gen) for p in params]

    def one():
        if program.uses_hess_diag:
            def closure():
                opt.zero_grad()
                loss = sum(((p * p) * (1 + p.abs())).sum() + (p * g).sum() for p, g in zip(params, grads))
                loss.backward(create_graph=True)
                return loss

            opt.step(closure)
        else:
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()

    for _ in range(warmup):
        one()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        one()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", help="library names (default: every library program)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flops-per-byte", type=float, default=10.0,
                    help="the machine's flops per byte of bandwidth, for the combined estimate")
    args = ap.parse_args(argv)

    import torch

    from optdisco import library
    from optdisco.dsl.cost import step_cost

    torch.set_num_threads(args.threads)
    names = args.programs.split(",") if args.programs else library.names()
    rows = []
    for n in names:
        prog = library.load(n)
        c = step_cost(prog)
        t = step_time(prog, args.repeats, args.warmup)
        rows.append((n, c.bytes_per_element, c.flops_per_element, t))
        print(f"  {n}: {c.bytes_per_element:.1f} B/elem, {c.flops_per_element:.1f} flop/elem, {t * 1e3:.2f} ms",
              file=sys.stderr)
    print(f"| program | bytes / elem (est.) | flops / elem (est.) | step, ms (measured, {args.threads} thread(s)) |")
    print("| --- | ---: | ---: | ---: |")
    for n, b, f, t in sorted(rows, key=lambda r: r[3]):
        print(f"| `{n}` | {b:.1f} | {f:.1f} | {t * 1e3:.2f} |")
    times = [r[3] for r in rows]
    print()
    print(f"Kendall τ against measured time over {len(rows)} programs: "
          f"bytes {kendall_tau([r[1] for r in rows], times):.3f}, flops {kendall_tau([r[2] for r in rows], times):.3f}, "
          f"bytes + flops/{args.flops_per_byte:g} "
          f"{kendall_tau([r[1] + r[2] / args.flops_per_byte for r in rows], times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
