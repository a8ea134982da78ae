"""Reports describe the search as it ran: later work (simplify, report baselines) has its own
sections and never inflates the search's counts or time axis; baselines that were seed programs
are not evaluated again; one seed gives no verdict (issue 12, finding 6)."""

import pytest

pytest.importorskip("optdisco.evaluate.protocol")

from optdisco.evaluate.validate import validate  # noqa: E402
from optdisco.search import Run  # noqa: E402
from optdisco.search.cli import main  # noqa: E402
from optdisco.search.report import best_so_far  # noqa: E402
from search_toy import toml_config  # noqa: E402

# momentum with a clip that never acts: simplify removes it (same behaviour), so it records a program
PLANTED = "# Planted\nhyper lr = 0.01, mu = 0.9\nstate b = zeros\ngc = clip(g, -1e20, 1e20)\nb = mu * b + gc\nw = w - lr * b\n"

CONFIG = toml_config(4, ["PLANTED", "sgd"], 4, 2, [(30, 1, 3), (30, 2, 3)], seed=1)


def test_report_keeps_later_work_out_of_the_search(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    (tmp_path / "planted.opt").write_text(PLANTED)
    cfg.write_text(CONFIG.replace("PLANTED", str(tmp_path / "planted.opt")))
    store = tmp_path / "run.db"
    assert main(["search", "--config", str(cfg), "--store", str(store), "--no-progress", "--no-report"]) == 0
    run = Run(store)
    search_end = max(r["finished"] for r in run.history())
    run.close()
    assert main(["simplify", str(store), "--top", "2"]) == 0
    assert main(["report", str(store), "--baselines", "sgd,momentum", "-o", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert "baseline sgd: the search evaluated it" in err  # a seed program: not evaluated again
    assert "evaluating baseline momentum" in err

    run = Run(store)
    later = run.store.candidates("origin IN ('simplified', 'baseline')")
    assert {c["origin"] for c in later} == {"simplified", "baseline"}
    assert [c["detail"] for c in later if c["origin"] == "baseline"] == ["momentum"]
    assert len(run.history()) == 4 and len(run.history(later=True)) > 4
    assert run.stats()["evaluations"] == 4
    series = best_so_far(run)
    assert len(series) == 4 and series[-1][1] == pytest.approx(search_end - run.store.get_meta("created"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| evaluations | 4 |" in md
    assert "## Simplification" in md and "## Baselines" in md
    assert "| sgd |" in md and "by the search (candidate" in md and "| momentum |" in md and "after the search" in md
    assert "Found with: lr" in md
    run.close()


def test_one_seed_gives_no_verdict():
    report = validate(["sgd"], baselines=["adamw"], task="quadratic", size="proxy", seeds=1, steps=20, points=3,
                      plot=None)
    verdicts = {r.name: r.verdict for r in report.rows}
    assert list(verdicts.values()).count("reference") == 1
    assert [v for v in verdicts.values() if v != "reference"] == ["one seed: no verdict"]
