"""One error style for every command (`optdisco COMMAND: message`, exit 2 for bad input, exit 1
for a failed check), --version, and quick commands that import nothing heavy (issue 12, finding 7)."""

import subprocess
import sys

from optdisco.search.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.startswith("optdisco 0.")


def test_usage_errors_are_one_line_with_the_command(capsys):
    for argv, prefix in ((["search", "--budget", "ten"], "optdisco search: argument --budget"),
                         (["nosuch"], "optdisco: argument COMMAND"),
                         (["export"], "optdisco export: the following arguments are required")):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(prefix), err


def test_input_errors_exit_2_with_the_prefix_and_failed_checks_exit_1(tmp_path, capsys):
    assert main(["show", "no_such_method"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("optdisco show: no library program named 'no_such_method'") and len(err.splitlines()) == 1
    assert main(["validate", "no_such_method", "--baselines", ""]) == 2
    assert capsys.readouterr().err.startswith("optdisco validate: ")
    bad = tmp_path / "bad.opt"
    bad.write_text("hyper lr = 0.1\nw = w - lr * q\n")
    assert main(["check", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"{bad}:2:")


def test_help_and_parser_import_neither_torch_nor_ray():
    code = ("import sys; from optdisco.search.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tasks_prints_no_rst_markup(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":math:" not in out
    assert "fit W in y = W* x + noise" in out


def test_lazy_packages_export_the_same_names():
    # the packages load their names on first use (so that the command line starts fast); every
    # name of __all__ must still resolve, and dsl's fingerprint must stay the function even after
    # the other dsl modules were imported first
    code = ("import importlib, pkgutil, types, optdisco.dsl as d\n"
            "for m in pkgutil.iter_modules(d.__path__):\n"
            "    if m.name != 'fingerprint': importlib.import_module('optdisco.dsl.' + m.name)\n"
            "import optdisco.evaluate, optdisco.proxies\n"
            "for pkg in (d, optdisco.evaluate, optdisco.proxies):\n"
            "    for n in pkg.__all__: getattr(pkg, n)\n"
            "from optdisco.dsl import fingerprint\n"
            "print(isinstance(fingerprint, types.FunctionType))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
