"""Validation at target scale: tune each program's learning rate, rerun it on every seed, compare.

``validate(programs, baselines=("adamw", "lion", "muon"), task="mlp", size="target", seeds=3)``:

1. Tune: ``evaluate`` each program on seed 0 over the standard LR grid (with its one extension).
2. Rerun: train the best learning rate on seeds ``0 … seeds−1``, recording the held-out loss at
   ``eval_points`` evenly spaced steps (for the curves only; the final loss is at the end).
3. Report, per program: the best learning rate, the median and the spread (max − min over seeds)
   of the final held-out loss, and the speedup over AdamW (when ``adamw`` is among the programs).

Speedup (after "Fantastic Pretraining Optimizers", Wen et al. 2025, and AlgoPerf): with ``L*``
the larger of the two median final losses, the steps AdamW's median held-out curve takes to reach
``L*`` divided by the steps the program's takes (linear interpolation between recorded steps),
capped at ``SPEEDUP_CAP`` = 4. A program that ends below tuned AdamW has ``L*`` = AdamW's final
loss and a speedup above 1; one that ends above has ``L*`` = its own final loss and a speedup below
1. Both read the same runs' curves, so under a decaying schedule the measure is conservative
(a shorter run would decay sooner). A difference of median final losses no larger than the
wider of the two seed spreads is reported as a tie.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .protocol import evaluate, resolve_program
from .result import Result

SPEEDUP_CAP = 4.0
REFERENCE = "adamw"


def steps_to_reach(steps: Sequence[float], losses: Sequence[float], target: float) -> float:
    """First step at which a loss curve reaches ``target`` (linear interpolation); ``inf`` if never."""
    prev_s, prev_l = None, None
    for s, l in zip(steps, losses):
        if math.isfinite(l) and l <= target:
            if prev_s is None or not math.isfinite(prev_l):
                return float(s)
            return prev_s + (prev_l - target) / (prev_l - l) * (s - prev_s)
        prev_s, prev_l = float(s), l
    return math.inf


def speedup(ref_steps, ref_curve, steps, curve, cap: float = SPEEDUP_CAP) -> float:
    """The reference's steps to reach the common loss ``L*`` over the program's, capped at ``cap``.

    ``L*`` is the larger of the two curves' last values (the loss both reach)."""
    target = max(ref_curve[-1], curve[-1])
    if not math.isfinite(target):
        return math.nan
    a = steps_to_reach(ref_steps, ref_curve, target)
    b = steps_to_reach(steps, curve, target)
    if b == 0:
        return cap
    return min(cap, a / b)


def median_curve(result: Result) -> list[float]:
    """Median over seeds of the held-out loss at each of ``result.eval_steps``."""
    curves = [m.eval_curve for m in result.members]
    out = []
    for k in range(len(result.eval_steps)):
        vals = [c[k] if k < len(c) and not math.isnan(c[k]) else math.inf for c in curves]
        out.append(statistics.median(vals))
    return out


@dataclass
class Row:
    name: str
    best_lr: float | None
    finals: list[float]
    median: float
    spread: float
    speedup: float | None = None
    verdict: str = ""
    reason: str | None = None
    tune: Result | None = None
    rerun: Result | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "best_lr", "finals", "median", "spread", "speedup", "verdict", "reason")}
        d["tune"] = self.tune.to_dict() if self.tune else None
        d["rerun"] = self.rerun.to_dict() if self.rerun else None
        from .result import _enc

        return _enc(d)


@dataclass
class Report:
    task: str
    size: str
    steps: int
    seeds: list[int]
    device: str
    rows: list[Row] = field(default_factory=list)
    plot: str | None = None

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no program {name!r} in this report ({[r.name for r in self.rows]})")

    def table(self) -> str:
        head = (f"validate on {self.task}/{self.size}: {self.steps} steps, seeds {self.seeds}, device {self.device}; "
                f"LR tuned on seed {self.seeds[0]}, final held-out loss")
        cols = ["program", "best lr", "median", "spread", f"speedup vs {REFERENCE}", "verdict"]
        lines = []
        for r in self.rows:
            lr = "—" if r.best_lr is None else f"{r.best_lr:.3g}"
            if r.tune is not None and r.tune.edge:
                lr += f" ({r.tune.edge} edge)"
            med = "—" if not math.isfinite(r.median) else f"{r.median:.4f}"
            spr = "—" if not math.isfinite(r.spread) else f"{r.spread:.4f}"
            sp = "—" if r.speedup is None or math.isnan(r.speedup) else f"{r.speedup:.2f}x"
            if r.speedup is not None and r.speedup >= SPEEDUP_CAP:
                sp = f"≥{SPEEDUP_CAP:g}x (cap)"
            verdict = r.verdict if not r.reason else f"failed: {r.reason}"
            lines.append([r.name, lr, med, spr, sp, verdict])
        widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c) for i, c in enumerate(cols)]
        fmt = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
        out = [head, fmt(cols), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines]
        if self.plot:
            out.append(f"plot: {self.plot}")
        if any(r.tune is not None and r.tune.edge for r in self.rows):
            out.append("(edge): the best LR was at that end of the grid even after extending it once")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return dict(task=self.task, size=self.size, steps=self.steps, seeds=self.seeds, device=self.device,
                    plot=self.plot, rows=[r.to_dict() for r in self.rows])


def _label(spec, i: int) -> str:
    if isinstance(spec, str) and "\n" not in spec.strip():
        s = spec.strip()
        return Path(s).stem if s.endswith(".opt") or "/" in s else s
    prog = resolve_program(spec)
    first = prog.doc.strip().splitlines()[0].strip() if prog.doc.strip() else ""
    return first.split("—")[0].strip()[:24] or f"program{i + 1}"


def validate(
    programs: Sequence,
    baselines: Sequence[str] = ("adamw", "lion", "muon"),
    task="mlp",
    size: str = "target",
    seeds: int = 3,
    steps: int | None = None,
    *,
    points: int = 8,
    decades: float = 3.0,
    eval_points: int = 50,
    plot: str | Path | None = "validate.png",
    time_limit: float | None = None,
    device: str | None = None,
    threads: int | None = 1,
    log=None,
) -> Report:
    """Tune, rerun and compare ``programs`` and ``baselines`` on ``task`` (see the module docstring).

    ``programs``: library names, ``.opt`` paths, program text or Programs. Returns a Report;
    ``report.table()`` is the printed table, and the PNG of the loss curves goes to ``plot``
    (``None``: no plot). ``log`` (e.g. ``print``) receives progress lines. ``threads``: torch CPU
    threads (default 1, as in ``evaluate``; ``None`` leaves torch's setting).
    """
    from .protocol import default_device, resolve_task

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    specs, names = [], []
    for i, spec in enumerate(list(programs) + [b for b in baselines if b]):
        name = _label(spec, i)
        if name in names:
            continue
        resolve_program(spec)  # fail early, before hours of training, on a bad name or file
        specs.append(spec)
        names.append(name)
    if not specs:
        raise ValueError("validate needs at least one program or baseline")
    task_obj = resolve_task(task, size)
    steps = int(steps or task_obj.steps)
    seed_list = list(range(seeds))
    device = str(device or default_device())
    every = max(1, steps // max(1, eval_points))
    report = Report(task=task_obj.name, size=task_obj.size, steps=steps, seeds=seed_list, device=device)
    common = dict(steps=steps, time_limit=time_limit, device=device, threads=threads)
    for name, spec in zip(names, specs):
        tune = evaluate(spec, task_obj, seeds=seed_list[:1], points=points, decades=decades, **common)
        if log:
            log(f"  {name}: tuned on seed 0 -> {tune.summary()}")
        if tune.best_lr is None:
            report.rows.append(Row(name, None, [], math.inf, math.inf, reason=tune.reason, tune=tune))
            continue
        rerun = evaluate(spec, task_obj, lrs=[tune.best_lr], seeds=seed_list, extend=False, eval_every=every,
                         hyper=tune.best_hyper or None, **common)
        finals = [m.final_loss for m in rerun.members]
        spread = max(finals) - min(finals) if all(math.isfinite(f) for f in finals) else math.inf
        reason = None if math.isfinite(rerun.fitness) else (rerun.reason or "failed on some seed")
        report.rows.append(Row(name, tune.best_lr, finals, rerun.fitness, spread, reason=reason, tune=tune, rerun=rerun))
        if log:
            log(f"  {name}: rerun on {seeds} seeds -> median {rerun.fitness:.5g}, spread {spread:.3g}")
    _compare(report)
    if plot:
        report.plot = str(plot_curves(report, plot))
    return report


def _compare(report: Report) -> None:
    ref = next((r for r in report.rows if r.name.lower() == REFERENCE and r.rerun is not None and not r.reason), None)
    for r in report.rows:
        if r.reason or r.rerun is None:
            continue
        if ref is None:
            r.verdict = ""
            continue
        if r is ref:
            r.speedup, r.verdict = 1.0, "reference"
            continue
        r.speedup = speedup(ref.rerun.eval_steps, median_curve(ref.rerun), r.rerun.eval_steps, median_curve(r.rerun))
        diff = r.median - ref.median
        if len(report.seeds) < 2:  # no spread to judge a difference by
            r.verdict = "one seed: no verdict"
        elif abs(diff) <= max(r.spread, ref.spread):
            r.verdict = "tie (within seed spread)"
        else:
            r.verdict = "better" if diff < 0 else "worse"


def plot_curves(report: Report, path: str | Path) -> Path:
    """A PNG of every program's held-out loss (median over seeds, band = min … max) against steps:
    the whole run on the left, the second half enlarged on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full, zoom) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    half_lo, half_hi = math.inf, -math.inf
    for r in report.rows:
        if r.rerun is None or not r.rerun.eval_steps:
            continue
        xs = r.rerun.eval_steps
        curves = [[v if math.isfinite(v) else math.nan for v in m.eval_curve] for m in r.rerun.members]
        med = [v if math.isfinite(v) else math.nan for v in median_curve(r.rerun)]
        lo = [min(c[k] for c in curves) for k in range(len(xs))]
        hi = [max(c[k] for c in curves) for k in range(len(xs))]
        label = f"{r.name} (lr {r.best_lr:.2g}, final {r.median:.4f})" if math.isfinite(r.median) else f"{r.name} (failed)"
        for ax in (full, zoom):
            (line,) = ax.plot(xs, med, label=label, lw=1.6)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
        second = [k for k, x in enumerate(xs) if x >= xs[-1] / 2]
        vals = [v for k in second for v in (lo[k], hi[k]) if math.isfinite(v)]
        if vals:
            half_lo, half_hi = min(half_lo, *vals), max(half_hi, *vals)
    if math.isfinite(half_lo) and half_hi > half_lo:
        pad = 0.05 * (half_hi - half_lo)
        zoom.set_xlim(report.steps / 2, report.steps)
        zoom.set_ylim(half_lo - pad, half_hi + pad)
    full.set_title(f"{report.task} ({report.size}): {len(report.seeds)} seeds, median and range")
    zoom.set_title("second half, enlarged")
    for ax in (full, zoom):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    full.set_ylabel("held-out loss")
    full.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def validate_suite(
    programs: Sequence,
    baselines: Sequence[str] = ("adamw", "nadam", "lion", "soap", "muon"),
    tasks: Sequence[str] = (),
    size: str = "proxy",
    seeds: int = 3,
    *,
    names: Sequence[str] | None = None,
    threads: int | None = 1,
    device: str | None = None,
    log=None,
) -> dict[str, Report]:
    """``validate`` on each of ``tasks`` (no plots): ``{task: Report}``. ``names`` labels
    ``programs`` (default: as ``validate`` labels them). Verdicts need at least two seeds."""
    if seeds < 2:
        raise ValueError("a verdict needs a seed spread: validate with at least 2 seeds")
    if not tasks:
        raise ValueError("validate_suite needs at least one task")
    out = {}
    specs = list(programs)
    if names is not None:
        import dataclasses

        specs = [dataclasses.replace(resolve_program(p), doc=f"{n} —") for p, n in zip(programs, names)]
    for task in tasks:
        if log:
            log(f"held-out task {task}:")
        out[task] = validate(specs, baselines, task=task, size=size, seeds=seeds, plot=None, threads=threads,
                             device=device, log=log)
    return out


def suite_table(reports: dict[str, Report]) -> str:
    """One Markdown table: each program × each task, its median held-out loss as a ratio to tuned
    AdamW's, the seed spread (max − min over seeds, as a ratio to AdamW's median too) and the
    verdict; then per program the count of wins, ties and losses."""
    tasks = list(reports)
    if not tasks:
        return ""
    names = [r.name for r in reports[tasks[0]].rows]
    head = "| program | " + " | ".join(f"{t}: ratio (spread) verdict" for t in tasks) + " | better / tie / worse |"
    lines = [head, "|" + " --- |" * (len(tasks) + 2)]
    for name in names:
        cells, counts = [], {"better": 0, "tie": 0, "worse": 0}
        for t in tasks:
            rep = reports[t]
            try:
                row = rep.row(name)
                ref = rep.row(REFERENCE)
            except KeyError:
                cells.append("—")
                continue
            if row.reason or not math.isfinite(row.median) or not math.isfinite(ref.median) or ref.median <= 0:
                cells.append("failed")
                counts["worse"] += 1
                continue
            verdict = row.verdict.split(" ")[0] if row.verdict else "—"
            if verdict in counts:
                counts[verdict] += 1
            cells.append(f"{row.median / ref.median:.3f} ({row.spread / ref.median:.3f}) {verdict}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {counts['better']} / {counts['tie']} / {counts['worse']} |")
    return "\n".join(lines)
