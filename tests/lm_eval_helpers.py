"""A local multiple-choice task for the lm-eval tests (no lm_eval import here: importing this module must
not need the eval extra)."""

from __future__ import annotations

import json
from pathlib import Path

MC_YAML = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_local_mc(directory: Path, docs: list[dict]) -> Path:
    """`local_mc` over `docs` ({question, choices, label}) as mc.jsonl and mc.yaml in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (directory / "mc.yaml").write_text(MC_YAML.format(data=directory / "mc.jsonl"))
    return directory
