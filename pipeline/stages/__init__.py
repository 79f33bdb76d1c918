"""The stages, by name, in pipeline order: `from pipeline.stages import STAGES`.

Built on first use (PEP 562), not when the package is imported: a Ray worker that runs one stage's
function imports this package on the way to its module, and must not pay for every other stage's
libraries (spaCy for annotate alone took 2 s of each tokenizer worker's start).
"""

import importlib

MODULES = {
    "ingest": "pipeline.stages.ingest",
    "annotate": "pipeline.stages.annotate",
    "select": "pipeline.stages.select",
    "dedup": "pipeline.stages.dedup",
    "synth": "pipeline.stages.synth",
    "mix": "pipeline.stages.mix",
    "train": "train_handoff.stage",
}


def __getattr__(name: str):
    if name == "STAGES":
        stages = {n: importlib.import_module(m).STAGE for n, m in MODULES.items()}
        globals()["STAGES"] = stages
        return stages
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
