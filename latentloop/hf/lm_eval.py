"""lm-evaluation-harness's own `hf` model on huginn-format checkpoints, without remote code.

    python -m latentloop.hf.lm_eval --model hf \\
        --model_args pretrained=DIR,num_steps=8,init_scale=0,add_bos_token=True --tasks hellaswag

is lm-eval's command line in a process that registered `huginn_raven` (lm-eval discovers no plugins,
so a bare `lm_eval` cannot know the class). Keys of `--model_args` that lm-eval does not use go to
`from_pretrained`, which sets them on the config: `num_steps`, `init_scale`, `kv_budget`.
`init_scale=0` and `add_bos_token=True` score as latentloop's own adapter does (`--model latentloop`).
"""

from __future__ import annotations

import sys

from . import register


def main(argv: list[str] | None = None) -> None:
    try:
        import lm_eval.models  # noqa: F401 (registers "hf": lm-eval imports its models only into an empty registry)
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:
        sys.exit(f"python -m latentloop.hf.lm_eval: error: lm-eval is not installed ({err}): "
                 "pip install 'latentloop[eval,hf]'")
    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
