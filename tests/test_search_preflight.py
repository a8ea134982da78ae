"""Bad input is refused before any work starts, with one line naming the problem, and files
that are not our run stores are never changed (issue 12, findings 2-5 and 7)."""

import hashlib
import json
import sqlite3
import subprocess
import sys

import pytest

pytest.importorskip("optdisco.evaluate.protocol")

from optdisco.search import Run, Search, SearchConfig  # noqa: E402
from optdisco.search.cli import main  # noqa: E402
from optdisco.search.store import SCHEMA_VERSION, RunStore  # noqa: E402
from search_toy import toml_config  # noqa: E402

TINY = toml_config(4, ["sgd", "momentum"], 4, 2, [(10, 1, 2)])


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"optdisco {command}: ")
    return err


@pytest.mark.parametrize(("toml", "key"), [
    ('budget = "ten"', "budget must be an integer"),
    ("workers = 2.5", "workers must be an integer"),
    ("mutation_weights = {foo = 1.0}", "mutation_weights: unknown operator 'foo'"),
    ('[[tiers]]\ntask = "mlp"\nsteps = "many"', "tiers[0].steps must be an integer"),
    ('[[tiers]]\ntask = "nosuch"', "tiers[0].task: unknown task 'nosuch'"),
    ("[[tiers]]\npromote = 1.5", "tiers[0].promote must be at most 1"),
    ("tournament = 30", "tournament (30) must be at most population (24)"),
])
def test_bad_config_values_are_named_with_key_and_file_before_a_store_exists(tmp_path, capsys, toml, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml + "\n")
    store = tmp_path / "run.db"
    assert main(["search", "--config", str(cfg), "--store", str(store), "--executor", "local", "--no-progress"]) == 2
    err = _one_line_error(capsys, "search")
    assert key in err and str(cfg) in err
    assert not store.exists()


def test_unknown_task_fails_at_once_without_ray_or_store(tmp_path):
    code = ("import sys; from optdisco.search.cli import main; rc = main(['search', '--task', 'nosuch', "
            f"'--store', {str(tmp_path / 'x.db')!r}, '--no-progress']); print('ray' in sys.modules); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout.strip() == "False"  # Ray never imported, let alone started
    from optdisco import proxies

    assert p.stderr.strip() == (f"optdisco search: task: unknown task 'nosuch'; known tasks: "
                                f"{', '.join(proxies.names())} (see optdisco tasks)")
    assert list(tmp_path.iterdir()) == []


def test_seed_programs_all_with_a_small_budget_says_so(tmp_path, capsys):
    assert main(["search", "--seed-programs", "all", "--budget", "10", "--executor", "local",
                 "--store", str(tmp_path / "x.db"), "--no-progress"]) == 2
    err = _one_line_error(capsys, "search")
    assert "budget 10 is too small" in err and "'all' names" in err
    assert not (tmp_path / "x.db").exists()


def test_no_ray_cluster_at_the_address_is_one_line_and_leaves_no_store(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray")

    def no_cluster(*a, **k):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    store = tmp_path / "x.db"
    assert main(["search", "--address", "auto", "--store", str(store), "--no-progress"]) == 2
    err = _one_line_error(capsys, "search")
    assert "cannot join a Ray cluster at address 'auto'" in err
    assert not store.exists()


def _foreign(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    db = tmp_path / "theirs.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE people (name TEXT)")
    con.execute("INSERT INTO people VALUES ('ada')")
    con.commit()
    con.close()
    return [text, db]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_foreign_files_are_refused_and_left_byte_for_byte_unchanged(tmp_path, capsys):
    for path in _foreign(tmp_path):
        before = _digest(path)
        for argv, command in (
            (["report", str(path)], "report"),
            (["report", str(path), "--baselines", "sgd"], "report"),
            (["export", str(path)], "export"),
            (["simplify", str(path)], "simplify"),
            (["finalize", str(path)], "finalize"),
            (["search", "--store", str(path), "--executor", "local", "--no-progress"], "search"),
            (["search", "--resume", str(path), "--no-progress"], "search"),
        ):
            assert main(argv) == 2, argv
            err = _one_line_error(capsys, command)
            assert str(path) in err and "not an optdisco run store" in err and "left unchanged" in err
            assert _digest(path) == before, argv
        if path.suffix == ".db" and path.name == "theirs.db":
            con = sqlite3.connect(path)
            assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["people"]
            con.close()


def test_a_store_of_a_newer_schema_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    store = tmp_path / "run.db"
    assert main(["search", "--config", str(cfg), "--store", str(store), "--no-progress", "--no-report"]) == 0
    with RunStore(store) as s:
        s.transaction(lambda c: RunStore.set_meta(c, "schema", SCHEMA_VERSION + 1))
    capsys.readouterr()
    before = _digest(store)
    for argv, command in ((["search", "--resume", str(store), "--budget", "8"], "search"),
                          (["report", str(store)], "report"), (["export", str(store)], "export")):
        assert main(argv) == 2
        err = _one_line_error(capsys, command)
        assert f"newer optdisco (store schema {SCHEMA_VERSION + 1}" in err
    assert _digest(store) == before


def test_resuming_a_finished_run_says_so_without_starting_anything(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace('executor = "local"', 'executor = "ray"'))
    store = tmp_path / "run.db"
    # run it in-process (no Ray needed to make the store), then resume with the recorded executor: ray
    search = Search(SearchConfig.from_toml(cfg, executor="local"), store=store)
    search.run()
    search.close()
    capsys.readouterr()
    assert main(["search", "--resume", str(store), "--executor", "ray"]) == 0
    err = capsys.readouterr().err
    assert "already spent its budget of 4 evaluations" in err and "--budget 104" in err
    assert Run(store).stats()["evaluations"] == 4


def test_local_executor_says_it_runs_one_evaluation_at_a_time(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace("workers = 1", "workers = 2"))
    assert main(["search", "--config", str(cfg), "--store", str(tmp_path / "r.db"), "--no-progress",
                 "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "executor local with 1 worker (in-process: one evaluation at a time" in err


def test_store_json_has_no_infinity_and_json_extract_reads_it(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    store = tmp_path / "run.db"
    search = Search(SearchConfig.from_toml(cfg), store=store)
    with search.store as s:
        s.transaction(lambda c: RunStore.set_meta(c, "probe", {"best": float("inf"), "x": [float("-inf"), 1.0]}))
        s.transaction(lambda c: RunStore.add_evaluation(c, candidate=1, tier=0, task="t", fitness=float("inf"),
                                                        result={"loss": float("inf")}, wall=0.0, worker="w",
                                                        error="e"))
        assert s.get_meta("probe") == {"best": float("inf"), "x": [float("-inf"), 1.0]}
        assert s.evaluations()[0]["result"] == {"loss": float("inf")}
    con = sqlite3.connect(store)
    texts = [r[0] for r in con.execute("SELECT value FROM meta")] + [r[0] for r in con.execute("SELECT result FROM evaluations")]
    assert not any("Infinity" in t or "NaN" in t for t in texts)
    for t in texts:
        json.loads(t, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert con.execute("SELECT json_extract(value, '$.best') FROM meta WHERE key = 'probe'").fetchone()[0] == "inf"
    assert con.execute("SELECT json_extract(result, '$.loss') FROM evaluations").fetchone()[0] == "inf"
    con.close()
