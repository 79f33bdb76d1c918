"""The stages, by name, in pipeline order."""

from pipeline.stage import Stage
from pipeline.stages import annotate, dedup, ingest, mix, select, synth
from train_handoff import stage as train

STAGES: dict[str, Stage] = {s.name: s for s in [ingest.STAGE, annotate.STAGE, select.STAGE, dedup.STAGE, synth.STAGE, mix.STAGE, train.STAGE]}
