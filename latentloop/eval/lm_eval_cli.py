"""`latentloop-lm-eval`: lm-evaluation-harness's command line with the "latentloop" model type.

A module of its own so that a missing lm_eval is one line on stderr and exit status 2, not a
traceback: the adapter (`harness`) subclasses lm_eval's classes and cannot be imported without it.
"""

from __future__ import annotations

import sys

PROG = "latentloop-lm-eval"


def main(argv: list[str] | None = None) -> int:
    try:
        from .harness import main as harness_main
    except ImportError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    harness_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
