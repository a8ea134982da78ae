"""The Pareto front of a multi-objective run, as data, a table and a plot, with library programs
placed on the same axes (``optdisco report``; ``optdisco export RUN.db --front``).

Front points are numbered 1, 2, … by loss (last tier first, then lower fitness); ``--point K``
exports point K. Library programs are the run's seeds and the baselines stored by ``optdisco
report --baselines``: their objectives are computed from their evaluation on the last tier
exactly as a candidate's are.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import objectives as objectives_mod
from . import pareto
from .engine import score_key
from .run import Run
from .store import Origin

LABELS = {
    "loss": "loss (fitness on the last tier; suite: ratio to tuned AdamW)",
    "memory": "optimizer state, bytes per parameter element",
    "cost": "bytes moved per element per step (estimate)",
    "quant": "held-out loss int4 / full precision",
}


def front(run: Run) -> list[dict]:
    """The run's front, numbered: ``[{point, id, tier, values, text, name}, …]`` sorted by loss
    (``name``: the library program's name when the point is one of the run's seeds)."""
    objs = pareto.load(run.store)
    seeds = [n for n, _ in run.store.get_meta("seeds", [])]
    rows = []
    for cid, point in pareto.front_points(run.state.get("front", [])):
        tier = -point[run.config.objectives.index("loss")][0]
        c = run.store.candidate(cid)
        name = seeds[c["proposal"]] if c["origin"] == Origin.SEED and c["proposal"] is not None and c["proposal"] < len(seeds) else None
        rows.append(dict(id=cid, tier=tier, values=objs.get((cid, tier), {}), text=c["program"], name=name))
    rows.sort(key=lambda r: (score_key(r["tier"], r["values"].get("loss", math.inf)), r["id"]))
    for k, r in enumerate(rows, 1):
        r["point"] = k
    return rows


def front_point(run: Run, k: int) -> dict:
    """Point ``k`` (1-based) of the front; a one-line error naming the store past the end."""
    rows = front(run)
    if not rows:
        raise ValueError(f"{run.path} has no Pareto front (a run with --objectives loss,memory|cost|quant keeps one)")
    if not 1 <= k <= len(rows):
        raise ValueError(f"{run.path}: the front has points 1 to {len(rows)}, not {k}")
    return rows[k - 1]


def library_points(run: Run) -> list[dict]:
    """The run's library seeds and baselines on the last tier: ``[{name, id, values}, …]``."""
    last = len(run.config.tiers) - 1
    names = [n for n, _ in run.store.get_meta("seeds", [])]
    out = {}
    for c in run.store.candidates_from(Origin.SEED, Origin.BASELINE):
        if c["tier_reached"] != last:
            continue
        e = run.store.evaluation(c["id"], last)
        if e is None:
            continue
        name = c["detail"] or (names[c["proposal"]] if c["proposal"] is not None and c["proposal"] < len(names)
                               else str(c["id"]))
        values = objectives_mod.compute(run.config.objectives, c["program"], e["fitness"], e["result"])
        out[name] = dict(name=name, id=c["id"], values=values)
    return sorted(out.values(), key=lambda r: (r["values"]["loss"], r["name"]))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def table(run: Run) -> str:
    """Markdown: the front's points, then the library programs, with every objective."""
    objs = list(run.config.objectives)
    extra = [k for k in ("quant_int8", "cost_flops") if k.split("_")[0] in objs]
    head = ["point", "candidate", "tier"] + objs + extra
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in front(run):
        label = str(r["point"]) + (f" (seed `{r['name']}`)" if r["name"] else "")
        cells = [label, str(r["id"]), str(r["tier"])] + [_fmt(r["values"].get(k)) for k in objs + extra]
        lines.append("| " + " | ".join(cells) + " |")
    last = len(run.config.tiers) - 1
    for r in library_points(run):
        cells = [f"`{r['name']}`", str(r["id"]), str(last)] + [_fmt(r["values"].get(k)) for k in objs + extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(run: Run, path: str | Path) -> Path:
    """One panel per objective besides loss: loss (x) against it (y) for every candidate that
    finished on the last tier (grey), the front (red, numbered) and the library (labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [o for o in run.config.objectives if o != "loss"]
    last = len(run.config.tiers) - 1
    objs = pareto.load(run.store, tier=last)
    fig, axes = plt.subplots(1, len(others), figsize=(5.5 * len(others), 4.2), squeeze=False)
    pts = front(run)
    lib = library_points(run)
    for ax, o in zip(axes[0], others):
        xs = [(v["loss"], v.get(o)) for v in objs.values() if _finite(v["loss"], v.get(o))]
        if xs:
            ax.scatter(*zip(*xs), s=8, color="0.75", label="candidates (last tier)")
        fp = [(r["values"]["loss"], r["values"].get(o), r["point"]) for r in pts
              if r["tier"] == last and _finite(r["values"]["loss"], r["values"].get(o))]
        if fp:
            ax.scatter([p[0] for p in fp], [p[1] for p in fp], s=22, color="tab:red", label="Pareto front", zorder=3)
            for x, y, k in fp:
                ax.annotate(str(k), (x, y), fontsize=7, color="tab:red", xytext=(3, 3), textcoords="offset points")
        for r in lib:
            x, y = r["values"]["loss"], r["values"].get(o)
            if _finite(x, y):
                ax.scatter([x], [y], marker="^", s=26, color="tab:blue", zorder=4)
                ax.annotate(r["name"], (x, y), fontsize=7, color="tab:blue", xytext=(3, -9), textcoords="offset points")
        ax.set_xlabel(LABELS["loss"], fontsize=8)
        ax.set_ylabel(LABELS[o], fontsize=8)
        ax.set_title(f"loss against {o} (lower-left is better)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def markdown(run: Run, out: Path) -> str:
    """The report's section on the front (the plot written into ``out``)."""
    plot(run, out / "pareto_front.png")
    return "\n".join([
        "", "## Pareto front", "",
        f"Objectives: {', '.join(run.config.objectives)} (all lower is better; `optdisco.search.objectives`). "
        "Points are the run's non-dominated programs, numbered by loss; library programs (seeds and baselines) "
        f"are placed on the same axes. Export one with `optdisco export {run.path.name} --front --point K`.", "",
        "![Pareto front](pareto_front.png)", "", table(run), "",
    ])
