"""`import latentloop` and `latentloop --help` do not import torch (start-up stays instant; the figures
are in benchmarks/startup.py), and the lazily loaded names are the real ones."""

from __future__ import annotations

import subprocess
import sys


def modules_loaded_by(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sys.modules), file=sys.stderr)"
    run = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return set(run.stderr.split())


def test_import_and_help_do_not_import_torch():
    assert "torch" not in modules_loaded_by("import latentloop")
    loaded = modules_loaded_by("from latentloop.cli import main\ntry:\n    main(['--help'])\n"
                               "except SystemExit:\n    pass")
    assert "latentloop.cli.generate" in loaded and "torch" not in loaded


def test_lazy_names_are_the_functions_even_after_their_modules_are_imported():
    import latentloop
    import latentloop.generate  # noqa: F401  (binds the submodule: the function must stay)
    from latentloop.generate import generate

    assert latentloop.generate is generate and callable(latentloop.generate)
    assert sorted(latentloop.__all__) == sorted(n for n in dir(latentloop) if n in latentloop.__all__)
    try:
        latentloop.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")
