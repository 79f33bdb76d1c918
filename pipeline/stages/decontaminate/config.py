"""Config of stage `decontaminate`: the benchmark test sets a corpus must not contain, and how to match them.

The same section type configures synth's own check (`synth.decontamination`): one implementation.
"""

from __future__ import annotations

import os

from pydantic import Field

from pipeline.section import Section

BUNDLED = "bundled:"  # path prefix of a test set shipped with phicurate (pipeline/stages/decontaminate/data)
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class BenchmarkSet(Section):
    """One test set: a JSONL file, the fields that make an item's text, and the field that names the item."""

    path: str  # JSONL (.gz/.zst/.bz2 read by name), one item a line; 'bundled:<file>': shipped with phicurate
    name: str | None = None  # in drop reasons and the report; default: the file name before its first '.'
    fields: list[str] = Field(default=["text"], min_length=1)  # joined (in this order) into the item's text
    # a field whose value names another field to add to the text (MMLU: answer 'B' -> the text of field B)
    answer_field: str | None = None
    id_field: str | None = None  # the item's id in drop_detail and the report; default: 'line N'

    def resolved_path(self) -> str:
        """The file to read: bundled sets live in the installed package."""
        if self.path.startswith(BUNDLED):
            return os.path.join(DATA_DIR, self.path[len(BUNDLED) :])
        return self.path

    @property
    def label(self) -> str:
        return self.name or os.path.basename(self.path.removeprefix(BUNDLED)).split(".")[0]


# The sets a Phi-3-style model is judged on that ship with phicurate (licences next to them).
DEFAULT_BENCHMARKS = [
    BenchmarkSet(
        path="bundled:mmlu-test.jsonl.gz",
        name="mmlu",
        fields=["question"],
        answer_field="answer",
        id_field="id",
    ),
    BenchmarkSet(path="bundled:gsm8k-test.jsonl.gz", name="gsm8k", fields=["question", "answer"]),
    BenchmarkSet(
        path="bundled:HumanEval.jsonl.gz",
        name="humaneval",
        fields=["prompt", "canonical_solution"],
        id_field="task_id",
    ),
]


class DecontaminateConfig(Section):
    benchmarks: list[BenchmarkSet] = Field(default=DEFAULT_BENCHMARKS, min_length=1)  # test sets to look for
    ngram: int = Field(13, ge=5)  # word n-gram length of the index (13: GPT-3, lm-eval)
    # items (or their longest field) shorter than `ngram` words are matched whole, if at least this long
    min_exact_words: int = Field(8, ge=3)
    # an n-gram or short text found in more items than this is shared boilerplate (instructions), not evidence
    max_items_per_ngram: int = Field(4, ge=1)
    workers: int | None = Field(None, ge=1)  # matching actors, each with one copy of the index; default: CPUs
    examples: int = Field(5, ge=0)  # documents shown per benchmark in contamination.json and the report
