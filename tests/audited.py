"""A tiny model really audited: a finished run with one pruned variant, for the field-check tests
of the command line and of the app."""

from __future__ import annotations

import shutil
from pathlib import Path

PLAN = """\
name = "tiny"
model = "{model}"

[[variants]]
prune = {{ method = "magnitude", sparsity = 0.5 }}

[calibration]
nsamples = 4
seqlen = 32

[probes]
suites = ["builtin"]
limit = 4

[profile]
prompt_tokens = 8
new_tokens = 4
runs = 2
warmup = 1

# The tiny random models answer at chance: the competence guard would fail every variant.
[gate]
competence = false

[[gate.rules]]
metric = "bias_score_ambig"
max = {limit}

[[gate.rules]]
metric = "perplexity_relative_change_pct"
max = 1e12
"""
VARIANT = "magnitude-50"


def audit_tiny(folder: Path, model: Path, limit: float = 1.5, *, profile: bool = True) -> tuple[Path, Path]:
    """A finished run of the plan above (its gate passes the variant for `limit` 1.5 and fails
    it for -1.5); returns (the store, the variant's folder). Without `profile` its record has
    no envelope figures."""
    from audit.plans import load_plan
    from audit.progress import drive
    from audit.runner import RunOptions, run_plan

    folder.mkdir(parents=True)
    plan_path = folder / "plan.toml"
    text = PLAN.format(model=model, limit=limit)
    plan_path.write_text(text if profile else text.replace("[profile]\n", "[profile]\nenabled = false\n"))
    store = folder / "results.db"
    drive(run_plan(load_plan(plan_path), RunOptions(store=store, work_dir=folder / "work")))
    return store, folder / "work" / "run-1" / VARIANT


def change_one_weight(source: Path, target: Path, name: str | None = None) -> str:
    """A copy of `source` with one value of one tensor changed; returns that tensor's name."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(str(target / "model.safetensors"))
    name = name or sorted(n for n in weights if n.endswith("q_proj.weight"))[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[3] += 0.5
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return name
