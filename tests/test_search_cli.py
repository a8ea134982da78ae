"""The command line: search (with a TOML config), resume, report, simplify, on the real
evaluator with a tiny quadratic funnel and the in-process executor."""

import math

import pytest

pytest.importorskip("optdisco.evaluate.protocol")

from optdisco.search import Run  # noqa: E402
from optdisco.search.cli import main  # noqa: E402
from search_toy import toml_config  # noqa: E402

CONFIG = toml_config(8, ["sgd", "momentum"], 6, 2, [(20, 1, 3), (40, 1, 3)], seed=1)


def test_search_resume_report_simplify(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    store = tmp_path / "run.db"
    assert main(["search", "--config", str(cfg), "--store", str(store), "--no-progress", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "best program" in out and str(store) in out
    run = Run(store)
    assert run.stats()["evaluations"] == 8
    assert run.config.tiers[0].task == "quadratic" and run.config.seed == 1
    run.close()

    assert main(["search", "--resume", str(store), "--budget", "12", "--no-progress"]) == 0
    out = capsys.readouterr().out
    run = Run(store)
    assert run.stats()["evaluations"] == 12
    assert (tmp_path / "run-report" / "report.md").is_file()
    assert "report:" in out

    assert main(["report", str(store), "-o", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    for png in ("best_vs_evaluations.png", "best_vs_time.png", "curves.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000
    best = run.best(1)[0]
    assert best["text"].strip() in md and "Lineage" in md

    assert main(["simplify", str(store), "--top", "1", "-o", str(tmp_path / "simple")]) == 0
    out = capsys.readouterr().out
    assert "simplified" in out and f"fitness {best['fitness']:.5g}" in out
    simplified = Run(store).store.candidates("origin = 'simplified'")
    for c in simplified:
        assert math.isfinite(c["fitness"]) and c["parents"] == [best["id"]]


def test_search_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["search", "--seed-programs", "no_such_method", "--store", str(tmp_path / "x.db"),
                 "--executor", "local", "--no-progress"]) == 2
    assert "no_such_method" in capsys.readouterr().err
    assert main(["search", "--resume", str(tmp_path / "missing.db")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("budget = 0\n")
    assert main(["search", "--config", str(bad), "--store", str(tmp_path / "y.db")]) == 2
    assert "budget" in capsys.readouterr().err
