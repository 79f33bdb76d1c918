"""annotate + select through the real runner on a small JSONL corpus: accounting, rerun rules, edu_score."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.config import load_config
from pipeline.runner import read_record, run_pipeline
from pipeline.stages.annotate.signals import SIGNAL_FIELDS
from tests.test_signals import BOILERPLATE, FRENCH, GOOD, REPETITIVE, SHORT, _onestopenglish

QUIET = dict(log=lambda m: None)


@pytest.fixture
def corpus(tmp_path):
    texts = [GOOD, REPETITIVE, FRENCH, BOILERPLATE, SHORT, *_onestopenglish(10)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _cfg(corpus, select: dict | None = None, annotate: dict | None = None) -> dict:
    return {
        "ingest": {"inputs": [{"path": str(corpus), "source": "web/test"}]},
        "annotate": {"workers": 1, "batch_size": 8, **(annotate or {})},
        "select": select or {},
    }


def _read(output: str, stage: str, sub: str = "") -> list[dict]:
    files = storage.list_files(storage.join(output, stage, sub), suffix=".parquet")
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def test_annotate_adds_signals_and_select_accounts_for_every_document(ray_local, write_config, corpus):
    cfg = load_config(write_config(_cfg(corpus)))
    run_pipeline(cfg, **QUIET)
    out = cfg.run.output
    ann = read_record(out, "annotate")
    assert ann["docs_in"] == ann["docs_out"] == 15 and ann["dropped"] == {}
    annotated = _read(out, "annotate")
    assert {f.name for f in SIGNAL_FIELDS} <= set(annotated[0])
    assert "edu_score" not in annotated[0]  # no edu_model configured

    sel = read_record(out, "select")
    assert sel["docs_in"] == 15 == sel["docs_out"] + sum(sel["dropped"].values())
    dropped = {r["id"]: r for r in _read(out, "select", "dropped")}
    kept = {r["id"] for r in _read(out, "select")}
    assert len(dropped) == sum(sel["dropped"].values()) and not (kept & set(dropped))
    by_text = {r["text"]: r for r in dropped.values()}
    assert by_text[FRENCH]["drop_reason"] == "lang"
    assert by_text[REPETITIVE]["drop_reason"] == "gopher_repetition:dup_line_frac"
    assert by_text[REPETITIVE]["drop_detail"] == "rep_dup_line_frac=0.9667 > 0.3"
    # repetition is checked first (FineWeb's order): one 2-gram is a large share of a 7-word text
    assert by_text[SHORT]["drop_reason"] == "gopher_repetition:top_2_gram"
    assert by_text[SHORT]["gopher_quality_fail"] == "gopher_short_doc"
    assert by_text[BOILERPLATE]["drop_reason"] == "gopher_quality:gopher_too_many_bullets"
    assert by_text[BOILERPLATE]["fineweb_quality_fail"] == "line_punct_ratio"  # every failing filter is named
    good = next(r for r in _read(out, "select") if r["text"] == GOOD)
    assert good["gopher_quality_fail"] is None and "drop_reason" not in good


def test_changing_a_threshold_reruns_select_but_not_annotate(ray_local, write_config, corpus):
    cfg = load_config(write_config(_cfg(corpus)))
    first = {r["stage"]: r for r in run_pipeline(cfg, **QUIET)}
    again = {r["stage"]: r for r in run_pipeline(cfg, **QUIET)}
    assert again["annotate"].get("skipped") and again["select"].get("skipped")

    strict = load_config(write_config(_cfg(corpus, {"gopher_quality": {"min_doc_words": 100_000 - 1}})))
    second = {r["stage"]: r for r in run_pipeline(strict, **QUIET)}
    assert second["ingest"].get("skipped") and second["annotate"].get("skipped")
    assert not second["select"].get("skipped")
    assert second["select"]["docs_out"] == 0 < first["select"]["docs_out"]
    assert second["select"]["dropped"]["gopher_quality:gopher_short_doc"] > 0


@pytest.mark.slow
def test_dropped_text_sample_blanks_texts_but_counts_every_document(ray_local, write_config, corpus):
    cfg = load_config(write_config(_cfg(corpus, {"dropped_text_sample": 0.0})))
    run_pipeline(cfg, **QUIET)
    sel = read_record(cfg.run.output, "select")
    dropped = _read(cfg.run.output, "select", "dropped")
    assert len(dropped) == sum(sel["dropped"].values()) > 0
    assert all(r["text"] is None and r["drop_reason"] for r in dropped)
    assert sel["docs_in"] == sel["docs_out"] + len(dropped)


def test_edu_score_from_a_fasttext_classifier(ray_local, write_config, corpus, tmp_path):
    train = tmp_path / "edu.train"
    pos = [
        "the water cycle moves water between oceans air and land",
        "plants take up water through their roots",
    ]
    neg = ["buy cheap watches online best prices", "click here to subscribe to our newsletter"]
    train.write_text(
        "".join(f"__label__pos {t}\n" for t in pos * 20) + "".join(f"__label__neg {t}\n" for t in neg * 20)
    )
    model = tmp_path / "edu.bin"
    # wordNgrams=2 (hashed buckets): with unigrams only, this fastText build diverges (NaN) on such a tiny
    # file. Trained in a fresh process: in a process that also runs Ray it sometimes diverged anyway.
    train_code = (
        "import sys, fasttext; fasttext.train_supervised(sys.argv[1], epoch=25, lr=0.5, dim=16, "
        "wordNgrams=2, bucket=100_000, minCount=1, verbose=0, thread=1, seed=1).save_model(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", train_code, str(train), str(model)], check=True)

    cfg = load_config(
        write_config(
            _cfg(
                corpus,
                {
                    "edu_score": 0.5,
                    "lang": None,
                    "lang_score": None,
                    "gopher_quality": None,
                    "gopher_repetition": None,
                    "c4_quality": None,
                    "fineweb_quality": None,
                },
                {"edu_model": str(model)},
            )
        )
    )
    run_pipeline(cfg, **QUIET)
    scores = {r["text"]: r["edu_score"] for r in _read(cfg.run.output, "annotate")}
    assert scores[GOOD] > 0.5 > scores[REPETITIVE]
    sel = read_record(cfg.run.output, "select")
    assert set(sel["dropped"]) == {"edu_score"}
    assert sel["docs_out"] == sum(s >= 0.5 for s in scores.values())


@pytest.mark.slow
def test_edu_threshold_without_edu_model_is_a_user_error(ray_local, write_config, corpus):
    from pipeline.errors import UserError

    cfg = load_config(write_config(_cfg(corpus, {"edu_score": 0.5})))
    with pytest.raises(UserError, match="annotate.edu_model"):
        run_pipeline(cfg, **QUIET)


def test_bad_select_config_names_the_key(write_config, corpus):
    from pipeline.errors import UserError

    with pytest.raises(
        UserError, match=r"select\.gopher_repetition\.top_n_grams: .*annotate measures n in \[2, 3, 4\]"
    ):
        load_config(write_config(_cfg(corpus, {"gopher_repetition": {"top_n_grams": {7: 0.1}}})))
    with pytest.raises(UserError, match=r"annotate\.lid_model: .*not found"):
        load_config(write_config(_cfg(corpus, annotate={"lid_model": "nope.ftz"})))


def test_demo_and_cluster_configs_have_valid_annotate_and_select():
    for path in ("configs/demo.yaml", "configs/phi3-mini.yaml"):
        cfg = load_config(path)
        assert cfg.annotate is not None and cfg.select is not None and cfg.select.lang == ["en"], path
