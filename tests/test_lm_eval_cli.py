"""`latentloop-lm-eval` and `python -m latentloop.eval.harness` without lm_eval: one line, no traceback."""

from __future__ import annotations

import subprocess
import sys

from latentloop.eval import lm_eval_cli


def test_lm_eval_command_without_lm_eval_is_one_line(monkeypatch, capsys):
    # `import lm_eval...` now raises ImportError, also for submodules an earlier test imported
    for name in [name for name in sys.modules if name == "lm_eval" or name.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.delitem(sys.modules, "latentloop.eval.harness", raising=False)
    assert lm_eval_cli.main(["--help"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith("latentloop-lm-eval: error: the lm-eval adapter needs lm_eval")
    assert "pip install 'latentloop[eval]'" in lines[0] and "Traceback" not in captured.err


def test_python_m_harness_without_lm_eval_is_one_line():
    code = ("import runpy, sys; sys.modules['lm_eval'] = None; sys.argv = ['harness', '--help']; "
            "runpy.run_module('latentloop.eval.harness', run_name='__main__', alter_sys=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "needs lm_eval" in done.stderr and "Traceback" not in done.stderr


def test_the_script_entry_point_is_the_one_line_wrapper():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["latentloop-lm-eval"] == "latentloop.eval.lm_eval_cli:main"
