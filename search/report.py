"""A run's report: PNG plots and a Markdown summary, written next to the run store.

- ``best_vs_evaluations.png``: best fitness on the last tier against evaluations;
- ``best_vs_time.png``: the same against wall time since the run started;
- ``curves.png``: loss curves (as the evaluator recorded them) of the best programs and of the
  baselines (the run's seed programs, plus any ``baselines`` evaluated for the report);
- ``meta_validation.png`` (when finalists were evaluated on the held-out suite during the run):
  the best search fitness so far and that program's held-out suite fitness against evaluations —
  the Lion paper's meta-overfitting curve;
- ``report.md``: the run's settings and statistics, the top programs as text and LaTeX with
  their lineage, the baselines' fitness, and (in their own sections) the held-out evaluations
  during the run and the end-of-run validation on the held-out suite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .run import Run
from .store import SEARCHED, Origin, RunStore, Status


def report_dir(run: Run) -> Path:
    return run.path.with_name(run.path.stem + "-report")


def best_so_far(run: Run) -> list[tuple[int, float, float]]:
    """(evaluation index, seconds since the first evaluation started, best last-tier fitness so far)."""
    last = len(run.config.tiers) - 1
    created = run.store.get_meta("created", None)
    out, best = [], math.inf
    hist = run.history()
    t0 = created if created is not None else (hist[0]["finished"] if hist else 0.0)
    for r in hist:
        if r["tier"] == last and r["origin"] not in (Origin.BASELINE, Origin.SIMPLIFIED) and r["fitness"] < best:
            best = r["fitness"]
        out.append((r["index"], r["finished"] - t0, best))
    return out


def extract_curve(result: dict | None) -> tuple[list[float], list[float]] | None:
    """(steps, losses) from an evaluator's details: the first ``*curve*`` entry holding numbers
    (a list, a list per member — averaged — or ``{"steps": [...], "loss": [...]}``)."""
    if not isinstance(result, dict):
        return None
    if isinstance(result.get("tasks"), dict) and result["tasks"]:  # a suite: its first task's curve
        return extract_curve(next(iter(result["tasks"].values())))
    keys = sorted((k for k in result if "curve" in k.lower()), key=lambda k: ("best" not in k, "heldout" not in k, k))
    for k in keys:
        c = _as_curve(result[k])
        if c:
            return c
    return None


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def _as_curve(v):
    if isinstance(v, dict):
        steps = v.get("steps") or v.get("step")
        for k in ("loss", "losses", "heldout", "values", "mean", "best"):
            if k in v:
                c = _as_curve(v[k])
                if c:
                    if steps and len(steps) == len(c[1]):
                        return [float(s) for s in steps], c[1]
                    return c
        for sub in v.values():
            c = _as_curve(sub)
            if c:
                return c
        return None
    if isinstance(v, list) and v:
        if all(_num(x) is not None for x in v):
            ys = [_num(x) for x in v]
            return list(range(len(ys))), ys
        if all(isinstance(x, list) and x and all(_num(y) is not None for y in x) for x in v):
            n = min(len(x) for x in v)
            ys = [sum(_num(x[i]) for x in v) / len(v) for i in range(n)]
            return list(range(n)), ys
        if all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
            return [float(a) for a, _ in v], [_num(b) for _, b in v]
    return None


def evaluate_baselines(run: Run, names: list[str], evaluator: Callable | None = None,
                       log: Callable[[str], None] | None = None) -> None:
    """Evaluate library programs on the run's last tier and store them as baselines (kept out of
    the population and of the best lists). Names already there are skipped, and so are programs
    the search itself evaluated on the last tier (a seed program, or a child that behaves the
    same): the report uses that recorded evaluation."""
    from optdisco import library
    from optdisco.dsl import fingerprint

    from .evaluator import Job, ProxyEvaluator, run_job

    from .objectives import evaluator_options

    evaluator = evaluator or ProxyEvaluator(options=evaluator_options(run.config.objectives))
    last = len(run.config.tiers) - 1
    tier = run.tier(last)
    have = {c["detail"] for c in run.store.candidates_from(Origin.BASELINE)}
    searched = {c["fingerprint"]: c for c in run.store.candidates_from(*SEARCHED)
                if c["tier_reached"] == last and c["fitness"] is not None}
    for name in names:
        if name in have:
            continue
        program = library.load(name)
        known = searched.get(fingerprint(program))
        if known is not None:
            if log:
                log(f"baseline {name}: the search evaluated it on {tier.label()} (candidate {known['id']}); reused")
            continue
        text = program.to_text()
        if log:
            log(f"evaluating baseline {name} on {tier.label()}")
        out = run_job(Job(-1, last, tier, text), evaluator)

        def tx(c, name=name, text=text, program=program, out=out):
            cid = RunStore.add_candidate(c, program=text, fingerprint=fingerprint(program), origin=Origin.BASELINE,
                                         detail=name, proposal=None, status=Status.DONE, tier_reached=last,
                                         fitness=out.fitness, mutation="baseline")
            RunStore.add_evaluation(c, candidate=cid, tier=last, task=tier.name, fitness=out.fitness,
                                    result=out.result, wall=out.wall, worker=out.worker, error=out.error)

        run.store.transaction(tx)


def _baselines(run: Run, asked: list[str] | None = None) -> list[dict]:
    """The run's seeds and stored baselines that reached the last tier, each with a name; with
    ``asked`` (library names), also the search's candidates that behave as one of them."""
    from optdisco import library
    from optdisco.dsl import fingerprint

    last = len(run.config.tiers) - 1
    seeds = {}
    names = [n for n, _ in run.store.get_meta("seeds", [])]
    wanted = {}
    for n in asked or ():
        try:
            wanted[fingerprint(library.load(n))] = n
        except KeyError:
            continue
    for c in run.store.candidates_from(Origin.CHILD):
        if c["fingerprint"] in wanted and c["tier_reached"] == last and c["fitness"] is not None:
            seeds.setdefault(wanted[c["fingerprint"]], c)
    for c in run.store.candidates_from(Origin.SEED, Origin.BASELINE):
        if c["tier_reached"] != last or c["fitness"] is None:
            continue
        name = c["detail"] or (names[c["proposal"]] if c["proposal"] is not None and c["proposal"] < len(names) else str(c["id"]))
        seeds[name] = c
    return [dict(c, name=n) for n, c in seeds.items()]


def meta_curve(run: Run) -> list[tuple[int, int, float, float | None]]:
    """At each held-out check: (evaluations, the best candidate on the last tier then, its search
    fitness, its held-out suite fitness or ``None`` if it was not measured)."""
    checks = run.state.get("heldout_checks", [])
    if not checks:
        return []
    held = run.heldout()
    last = len(run.config.tiers) - 1
    evals = [e for e in run.store.evaluations() if e["tier"] == last]
    cands = {c["id"]: c for c in run.store.candidates_from(*SEARCHED)}
    done_at = {}
    for i, e in enumerate(run.store.evaluations(), 1):
        done_at.setdefault(e["candidate"], i)
    out = []
    for at in checks:
        pool = [e for e in evals if e["candidate"] in cands and done_at[e["candidate"]] <= at and math.isfinite(e["fitness"])]
        if not pool:
            continue
        best = min(pool, key=lambda e: (e["fitness"], e["candidate"]))
        h = held.get(best["candidate"])
        out.append((at, best["candidate"], best["fitness"], None if h is None else h["fitness"]))
    return out


def _fmt(x: float) -> str:
    return f"{x:.5g}" if x is not None and math.isfinite(x) else "failed"


def write_report(run: Run, out: str | Path | None = None, top: int = 5, baselines: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) if out else report_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    cfg = run.config
    last = len(cfg.tiers) - 1
    series = best_so_far(run)
    stats = run.stats()
    best = run.best(top)
    base = _baselines(run, baselines)

    for fname, xi, xlabel in (("best_vs_evaluations.png", 0, "evaluations"), ("best_vs_time.png", 1, "wall time (s)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        pts = [(p[xi], p[2]) for p in series if math.isfinite(p[2])]
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label="best found")
        for b in base:
            if math.isfinite(b["fitness"]):
                ax.axhline(b["fitness"], ls=":", lw=1, color="gray")
                ax.annotate(b["name"], (0, b["fitness"]), xycoords=("axes fraction", "data"), fontsize=7, color="gray")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"fitness on {cfg.tiers[last].label()} (lower is better)")
        ax.set_title("best fitness so far")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for i, b in enumerate(best[:3]):
        c = extract_curve(run.curves(b["id"]))
        if c:
            ax.plot(*c, label=f"#{i + 1} (candidate {b['id']})")
            drawn += 1
    for b in base:
        c = extract_curve(run.curves(b["id"]))
        if c:
            ax.plot(*c, ls="--", lw=1, label=b["name"])
            drawn += 1
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    t_last = cfg.tiers[last]
    ax.set_title(f"training loss on {t_last.task_names[0]} (first task of the suite)" if t_last.is_suite
                 else f"loss curves on {t_last.label()}", fontsize=9)
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "the evaluator recorded no curves", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    meta = meta_curve(run)
    if meta:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([m[0] for m in meta], [m[2] for m in meta], "o-", label=f"search fitness ({cfg.tiers[last].label()})")
        pts = [(m[0], m[3]) for m in meta if m[3] is not None and math.isfinite(m[3])]
        if pts:
            ax.plot(*zip(*pts), "s--", label=f"held-out suite ({', '.join(cfg.heldout)})")
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("fitness / tuned AdamW (lower is better)")
        ax.set_title("best program so far: search vs held-out fitness")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "meta_validation.png", dpi=110)
        plt.close(fig)
    text = _markdown(run, stats, best, base) + _heldout_markdown(run, meta)
    if len(cfg.objectives) > 1:  # the Pareto front, its plot and table (optdisco.search.front)
        from .front import markdown as front_markdown

        text += front_markdown(run, out)
    (out / "report.md").write_text(text)
    return out


def _heldout_markdown(run: Run, meta) -> str:
    """The sections about work beyond the search's selection: held-out checks and validation."""
    cfg = run.config
    L = []
    held = run.heldout()
    if held:
        L += ["", "## Held-out suite during the run", "",
              f"Finalists evaluated on {', '.join(cfg.heldout)} (never read by selection); fitness is the suite "
              "aggregate of the ratios to tuned AdamW (1 = a tie).", ""]
        if meta:
            L += ["![search vs held-out fitness](meta_validation.png)", "",
                  "| evaluations | best candidate | search fitness | held-out fitness |", "| --- | --- | --- | --- |"]
            for at, cid, f, h in meta:
                L.append(f"| {at} | {cid} | {_fmt(f)} | {_fmt(h) if h is not None else '—'} |")
            L.append("")
        L += ["| candidate | after evaluations | held-out fitness | " + " | ".join(f"{t} ratio" for t in cfg.heldout) + " |",
              "| --- | --- | --- |" + " --- |" * len(cfg.heldout)]
        for cid, h in sorted(held.items(), key=lambda kv: kv[1]["fitness"]):
            rs = (h["result"] or {}).get("ratios", {})
            L.append(f"| {cid} | {h['at_evaluation']} | {_fmt(h['fitness'])} | "
                     + " | ".join(_fmt(rs.get(t)) if rs.get(t) is not None else "—" for t in cfg.heldout) + " |")
    val = run.validation()
    if val:
        L += ["", "## Validation on the held-out suite", "",
              f"After the search: the best programs simplified, then each program and baseline tuned on seed 0 and rerun "
              f"on {val['seeds']} seeds per held-out task. Cells: median held-out loss / tuned AdamW's (seed spread / "
              "AdamW's median) and the verdict against AdamW (a difference within the wider seed spread is a tie).", "",
              val["table"], ""]
        for p in val["programs"]:
            L += [f"{p['name']}:", "", "```", p["text"].rstrip(), "```", ""]
    return "\n".join(L) + ("\n" if L else "")


def _markdown(run: Run, stats: dict, best: list[dict], base: list[dict]) -> str:
    from optdisco.dsl import to_latex

    from .context import describe

    cfg = run.config
    last = len(cfg.tiers) - 1
    L = [f"# optdisco search report: `{run.path.name}`", ""]
    L += ["## Run", ""]
    L.append(f"- funnel: {' → '.join(f'{t.label()} (top {t.promote:.0%} promoted)' if i else t.label() for i, t in enumerate(cfg.tiers))}")
    L.append(f"- seed programs: {', '.join(cfg.seed_programs)}; population {cfg.population}, tournament {cfg.tournament}, "
             f"at most {cfg.max_statements} statements; seed {cfg.seed}")
    L.append(f"- executor: {cfg.executor}, {cfg.workers} workers")
    L += ["", "| statistic | value |", "| --- | --- |"]
    for k, label in (("evaluations", "evaluations"), ("candidates", "distinct candidates"),
                     ("duplicates", "duplicates skipped (no evaluation)"),
                     ("rejected", "children rejected before evaluation"), ("failures", "worker failures (died or timed out)"),
                     ("failed_evaluations", "failed evaluations (fitness inf)"), ("restarts", "restarts"),
                     ("elapsed", "wall time (s)"), ("best_fitness", "best fitness on the last tier")):
        v = stats[k]
        L.append(f"| {label} | {_fmt(v) if isinstance(v, float) else v} |")
    if stats["rejected_by_reason"]:
        L += ["", "Rejected children by reason: " + "; ".join(f"{k} ({v})" for k, v in stats["rejected_by_reason"].items())]
    L += ["", "![best fitness against evaluations](best_vs_evaluations.png)",
          "![best fitness against wall time](best_vs_time.png)", "![loss curves](curves.png)", ""]
    if base:
        L += ["## Baselines", "", f"Fitness on {cfg.tiers[last].label()} (lower is better). Seed programs "
              "are the search's own evaluations; other baselines were evaluated after the search, on the same "
              "tier, and are not counted in its evaluations.", "",
              "| program | fitness | evaluated | tuned lr |", "| --- | --- | --- | --- |"]
        for b in sorted(base, key=lambda b: b["fitness"]):
            when = "after the search" if b["origin"] == Origin.BASELINE else f"by the search (candidate {b['id']})"
            ctx = run.context(b["id"], last)
            lr = f"{ctx['lr']:.3g}" if ctx and "lr" in ctx else "—"
            L.append(f"| {b['name']} | {_fmt(b['fitness'])} | {when} | {lr} |")
        L.append("")
    L += ["## Top programs", ""]
    for i, b in enumerate(best, 1):
        L.append(f"### #{i}: candidate {b['id']} — fitness {_fmt(b['fitness'])} on {cfg.tiers[b['tier_reached']].label()}")
        L += ["", "```", b["text"].rstrip(), "```", ""]
        try:
            L += ["$$", to_latex(b["program"]), "$$", ""]
        except Exception:  # noqa: BLE001 - LaTeX is a courtesy; never fail the report for it
            pass
        chain = run.lineage(b["id"])
        steps = []
        for c in chain:
            what = c["origin"] if c["origin"] in (Origin.SEED, Origin.SIMPLIFIED) else c["mutation"]
            steps.append(f"{c['id']} ({what}{': ' + c['detail'] if c['detail'] else ''}; {_fmt(c['fitness'])})")
        L += [f"Found with: {describe(b.get('context'))}.", ""]
        L += ["Lineage (newest first): " + " ← ".join(steps), ""]
    L += _simplification_section(run)
    return "\n".join(L)


def _simplification_section(run: Run) -> list[str]:
    """The programs ``optdisco simplify`` recorded, each beside the program it came from."""
    from .context import describe

    rows = run.store.candidates_from(Origin.SIMPLIFIED)
    if not rows:
        return []
    last = len(run.config.tiers) - 1
    L = ["## Simplification", "", f"Recorded by `optdisco simplify` after the search, evaluated on "
         f"{run.config.tiers[last].label()} (not counted in the search's evaluations).", ""]
    for c in rows:
        parent = run.store.candidate(c["parents"][0]) if c["parents"] else None
        before = _fmt(parent["fitness"]) if parent else "?"
        L.append(f"### candidate {c['id']}, simplified from {parent['id'] if parent else '?'} "
                 f"({c['detail']}): fitness {before} → {_fmt(c['fitness'])}")
        L += ["", "```", c["program"].rstrip(), "```", "", f"Found with: {describe(run.context(c['id']))}.", ""]
    return L
