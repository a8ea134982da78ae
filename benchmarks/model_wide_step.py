"""Step time of an exported model-wide program (Prodigy) against pytorch_optimizer.Prodigy.

A model-wide program runs the per-tensor step of every parameter in lockstep (no multi-tensor or
compiled path); parameters of one shape and group with at most ``STACK_NUMEL`` (16,384) elements
step together as the members of one call. This prints milliseconds per step, median of the timed
steps, for the reference and for ours, and their ratio, measured in the same run, on:

- ``small``: 200 vectors of 64 elements (per-call overhead dominates);
- ``layers``: 12 transformer-like blocks (four 256 × 256 matrices and six 256-vectors each);
- ``wide``: 8 matrices of 512 × 1024 (memory traffic dominates).

Run::

    python benchmarks/model_wide_step.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

MODELS = {
    "small": [(64,)] * 200,
    "layers": ([(256, 256)] * 4 + [(256,)] * 6) * 12,
    "wide": [(512, 1024)] * 8,
}


def time_steps(make, shapes, steps, warmup=3):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    targets = [torch.randn(s, generator=gen) for s in shapes]
    opt = make(params)
    times = []
    for i in range(warmup + steps):
        for p, y in zip(params, targets):
            p.grad = p.detach() - y
        t0 = time.perf_counter()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import pytorch_optimizer as po

    from optdisco.dsl import to_optimizer

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per step (median of {args.steps})")
    print("| model | tensors | elements | pytorch_optimizer.Prodigy | ours | ours / reference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, shapes in MODELS.items():
        ref = time_steps(lambda ps: po.Prodigy(ps, weight_decay=0.01), shapes, args.steps)
        ours = time_steps(lambda ps: to_optimizer("prodigy", ps, wd=0.01), shapes, args.steps)
        numel = sum(torch.Size(s).numel() for s in shapes)
        print(f"| {name} | {len(shapes)} | {numel:,} | {ref:.2f} | {ours:.2f} | {ours / ref:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
