"""docs/config.md is generated from the models: it must match them, and every plain field must be
explained."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

from pipeline.tools import config_doc


def test_config_reference_matches_the_models():
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == config_doc.render(), (
        "docs/config.md differs from the config models: regenerate it with "
        "`python -m pipeline.tools.config_doc > docs/config.md`"
    )


def test_every_plain_field_has_a_comment():
    assert config_doc.undocumented() == []


def test_the_reference_sees_a_changed_default(monkeypatch):
    """The check can fail: a default changed in a model shows up in the rendered page."""
    from pipeline.stages.dedup.config import DedupConfig

    before = config_doc.render()
    monkeypatch.setattr(DedupConfig.model_fields["num_perm"], "default", 113)
    assert config_doc.render() != before


def test_config_import_loads_no_engine():
    """`import pipeline.config` (status, validate, tune, report) must not pull Ray, spaCy, torch, datasketch,
    vLLM."""
    code = (
        "import pipeline.config, sys; "
        "print(sorted(m for m in ('ray','spacy','torch','datasketch','vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
