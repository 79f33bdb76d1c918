"""Educational-value classifier: labels, training on real bundled labels, metrics, scoring, rubric parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classifiers.annotate import allocate, label_replies
from classifiers.labels import read_labels
from classifiers.metrics import binary_metrics, roc_auc
from classifiers.rubric import PROMPT_VERSION, build_prompt, parse_score
from classifiers.score import EduScorer
from classifiers.train import TrainParams, evaluate, train
from pipeline.errors import UserError
from pipeline.tools.cli import main

LABELS = "tests/data/labels/edu-reference.jsonl.zst"
# The floor for the held-out ROC-AUC. Measured on this split (seed 0, groups = site/page/article):
# 0.946 unquantized, 0.933 quantized; seeds 1-2 of the split gave 0.94 and 0.97. The validation
# split has only ~19 negatives (English crawl pages are few), so one page moves the AUC by ~0.005;
# 0.90 leaves room for that noise and still fails a model that learned little (a docs-only
# model scores OneStopEnglish at chance, 0.47: see README).
AUC_FLOOR = 0.90


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- training on real labels --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("edu")
    metrics = train([LABELS], str(out), TrainParams(threshold=1, quantize=False))
    return out, metrics


def test_train_on_bundled_labels_reaches_auc_floor(trained):
    out, m = trained
    assert m["valid"]["roc_auc"] >= AUC_FLOOR, m["valid"]
    assert m["valid"]["f1"] >= 0.85, m["valid"]
    # the split is by group: no site/page/article on both sides
    assert m["train_counts"]["docs"] + m["valid_counts"]["docs"] == len(read_labels([LABELS]))
    assert m["valid_counts"]["labels"]["__label__neg"] > 0 and m["valid_counts"]["labels"]["__label__pos"] > 0
    assert m["label_source"].startswith("reference-vs-random")
    assert len(m["data_hash"]) == 64
    c = m["valid"]["confusion"]
    assert c["tp"] + c["fn"] == m["valid"]["positives"] and c["fp"] + c["tn"] == m["valid"]["negatives"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["valid"] == m["valid"]


def _baseline_margins(valid: dict) -> tuple[float, float]:
    """The model's F1 over that of calling everything educational (which scores 0.926 on this split: most
    of it is positive), and its balanced accuracy over that baseline's 0.5."""
    p, n, c = valid["positives"], valid["negatives"], valid["confusion"]
    all_positive_f1 = 2 * p / (2 * p + n)
    balanced = (c["tp"] / p + c["tn"] / n) / 2
    return valid["f1"] - all_positive_f1, balanced - 0.5


# Measured on this split: F1 0.959 against 0.926 (+0.033), balanced accuracy 0.759 (+0.259). One of its 19
# negatives moves the F1 by ~0.004 and the balanced accuracy by 0.026, so the margins leave room for a few.
F1_MARGIN, BALANCED_MARGIN = 0.02, 0.15


def test_classifier_beats_calling_everything_educational(trained):
    _, m = trained
    f1_gain, balanced_gain = _baseline_margins(m["valid"])
    assert f1_gain >= F1_MARGIN and balanced_gain >= BALANCED_MARGIN, m["valid"]
    # the check sees the baseline itself fail: every validation document called positive
    p, n = m["valid"]["positives"], m["valid"]["negatives"]
    everything = {"positives": p, "negatives": n, "f1": round(2 * p / (2 * p + n), 4)}
    everything["confusion"] = {"tp": p, "fn": 0, "fp": n, "tn": 0}
    f1_gain, balanced_gain = _baseline_margins(everything)
    assert f1_gain < F1_MARGIN and balanced_gain < BALANCED_MARGIN


def test_training_is_deterministic(trained, tmp_path):
    _, m = trained
    again = train([LABELS], str(tmp_path), TrainParams(threshold=1, quantize=False))
    assert again["valid"] == m["valid"]


def test_unchanged_labels_and_params_keep_the_model(trained):
    out, m = trained
    mtime = (out / "model.bin").stat().st_mtime_ns
    again = train([LABELS], str(out), TrainParams(threshold=1, quantize=False), force=False)
    assert again["up_to_date"] and again["valid"] == m["valid"]
    assert (out / "model.bin").stat().st_mtime_ns == mtime


def test_scorer_scores_docs_above_crawl(trained):
    _, m = trained
    scorer = EduScorer(m["model"])
    assert scorer.kind == "binary"
    labels = read_labels([LABELS])
    pos = [t for t, s, src in zip(labels.texts, labels.scores, labels.sources) if src == "web/python-docs"][
        :20
    ]
    neg = [t for t, s in zip(labels.texts, labels.scores) if s == 0][:20]
    sp, sn = scorer.score(pos), scorer.score(neg)
    assert all(0.0 <= s <= 1.0 for s in sp + sn)
    assert np.mean(sp) > np.mean(sn)
    assert scorer.score([]) == []
    assert scorer.score(["line one\nline two"]) == scorer.score(["line one line two"])  # newlines stripped


def test_eval_matches_train_metrics_on_same_docs(trained):
    _, m = trained
    ev = evaluate(m["model"], [LABELS], TrainParams(threshold=1))
    assert ev["eval"]["n"] == m["train"]["n"] + m["valid"]["n"]
    assert ev["eval"]["roc_auc"] >= m["valid"]["roc_auc"]  # includes the training documents


def test_per_score_model_gives_expected_rating(tmp_path):
    rows = [
        {"text": f"python function argument returns value example {i}", "score": 4, "group": f"d{i}"}
        for i in range(30)
    ]
    rows += [
        {"text": f"buy cheap shoes sale click here now {i}", "score": 0, "group": f"c{i}"} for i in range(30)
    ]
    rows += [{"text": f"a short story about my weekend {i}", "score": 2, "group": f"s{i}"} for i in range(30)]
    labels = write_jsonl(tmp_path / "r.jsonl", rows)
    m = train([labels], str(tmp_path / "m"), TrainParams(per_score=True, quantize=False, valid_fraction=0.3))
    assert m["kind"] == "ratings"
    scorer = EduScorer(m["model"])
    hi, lo = scorer.score(["python function argument returns value", "buy cheap shoes click here"])
    assert 0 <= lo < hi <= 5


def test_diverged_training_retries_at_half_the_learning_rate(tmp_path):
    """fastText's "Encountered NaN": lr 100 diverges on this set, 50 trains; 1000 fails five times over."""
    rows = [
        {"text": f"python function argument returns value example {i}", "score": 4, "group": f"d{i}"}
        for i in range(30)
    ]
    rows += [
        {"text": f"buy cheap shoes sale click here now {i}", "score": 0, "group": f"c{i}"} for i in range(30)
    ]
    labels = write_jsonl(tmp_path / "r.jsonl", rows)
    m = train([labels], str(tmp_path / "m"), TrainParams(quantize=False, valid_fraction=0.3, lr=100))
    assert (m["fasttext_args"]["lr"], m["fasttext_args"]["seed"]) == (50, 1)
    with pytest.raises(UserError, match=r"diverged on 5 tries .*lower --lr"):
        train([labels], str(tmp_path / "m2"), TrainParams(quantize=False, valid_fraction=0.3, lr=1000))


# --- bad label sets -----------------------------------------------------------------------------


def test_single_class_labels_name_the_file(tmp_path):
    labels = write_jsonl(tmp_path / "one.jsonl", [{"text": f"doc {i}", "score": 4} for i in range(10)])
    with pytest.raises(UserError, match=r"one\.jsonl.*all 10 labeled records are positive"):
        train([labels], str(tmp_path / "m"))


def test_empty_labels_name_the_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match=r"empty\.jsonl: no labeled records"):
        train([str(tmp_path / "empty.jsonl")], str(tmp_path / "m"))


def test_bad_records_are_counted_with_file_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"text": "good", "score": 1}\nnot json\n{"text": "", "score": 1}\n{"text": "x", "score": "high"}\n'
    )
    labels = read_labels([str(path)])
    assert len(labels) == 1 and labels.bad == 3
    assert labels.bad_examples[0].startswith(f"{path}:2: not JSON")
    assert "mixed.jsonl:4: score is not a number" in labels.bad_examples[2]


def test_parquet_without_score_column_is_a_user_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "l.parquet")
    with pytest.raises(UserError, match=r"l\.parquet: label file has no 'score' column"):
        read_labels([str(tmp_path / "l.parquet")])


def test_cli_single_class_exits_2(tmp_path, capsys):
    labels = write_jsonl(tmp_path / "neg.jsonl", [{"text": f"doc {i}", "score": 0} for i in range(5)])
    assert main(["classifier", "train", "--labels", labels, "--out", str(tmp_path / "m")]) == 2
    assert "neg.jsonl" in capsys.readouterr().err


# --- metrics ------------------------------------------------------------------------------------


def test_roc_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 0, 1], [0.1, 0.4, 0.5, 0.8]) == 0.75
    assert roc_auc([1, 1], [0.1, 0.2]) is None


def test_binary_metrics_confusion():
    m = binary_metrics([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.7], threshold=0.5)
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4) and m["recall"] == pytest.approx(2 / 3, abs=1e-4)


# --- rubric and teacher replies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "reply,score",
    [
        ("The extract is a tutorial.\nEducational score: 4", 4),
        ("**Educational score:** 3/5", 3),
        ("Educational Score: 5 points", 5),
        ("Educational score: 0", 0),
        ("2", 2),
        ("Educational score: 3. In short, Educational score: 3", 3),
    ],
)
def test_parse_score_accepts(reply, score):
    assert parse_score(reply) == (score, None)


@pytest.mark.parametrize(
    "reply,why",
    [
        (None, "no reply"),
        ("   ", "empty reply"),
        ("I would give it a 4.", "no 'Educational score: N' line"),
        ("Educational score: 7", "not a whole number from 0 to 5"),
        ("Educational score: 2.5", "not a whole number from 0 to 5"),
        ("Educational score: 2\nEducational score: 4", "conflicting scores"),
    ],
)
def test_parse_score_rejects_without_guessing(reply, why):
    score, reason = parse_score(reply)
    assert score is None and why in reason


def test_build_prompt_cuts_long_documents():
    prompt = build_prompt("word " * 5000, max_chars=1000)
    assert "Educational score: <points>" in prompt and prompt.count("word") < 210
    assert "<extract>\nshort text\n</extract>" in build_prompt("short text")


def test_allocate_is_proportional_with_one_per_source():
    alloc = allocate({"web/a": 900, "web/b": 90, "web/c": 10}, 100)
    assert sum(alloc.values()) == 100 and alloc["web/a"] >= 88 and alloc["web/c"] >= 1
    assert allocate({"web/a": 3, "web/b": 2}, 10) == {"web/a": 3, "web/b": 2}


def test_label_replies_keeps_unparsed_aside():
    docs = [{"id": str(i), "text": f"t{i}", "source": "web/x", "url": None} for i in range(4)]
    replies = [
        {"generation": "Fine.\nEducational score: 3", "error": None},
        {"generation": "no idea", "error": None},
        {"generation": None, "error": "TimeoutError: read timed out"},
        {"generation": "Educational score: 9", "error": None},
    ]
    labels, unparsed = label_replies(docs, replies, "vllm:teacher")
    assert [(r["id"], r["score"], r["prompt_version"]) for r in labels] == [("0", 3, PROMPT_VERSION)]
    assert [r["id"] for r in unparsed] == ["1", "2", "3"]
    assert unparsed[1]["reason"].startswith("generation failed: TimeoutError")
    assert unparsed[0]["reply"] == "no idea"


# --- the teacher's backend from the command line ------------------------------------------------


def _annotate_args(*argv):
    from pipeline.tools.cli import build_parser

    return build_parser().parse_args(["classifier", "annotate", "out/x", "--out", "labels", *argv])


def test_backend_from_model_or_files(tmp_path):
    from classifiers.cli import _backend

    b = _backend(_annotate_args("--model", "tiny-phi3"))
    assert b.kind == "vllm" and b.model == "tiny-phi3"
    b = _backend(_annotate_args("--model", "Qwen/Qwen2.5-72B-Instruct", "--base-url", "http://gpu:8000/v1"))
    assert b.kind == "openai" and b.openai.base_url == "http://gpu:8000/v1"
    (tmp_path / "run.yaml").write_text("synth:\n  backend: {model: tiny-phi3, sampling: {max_tokens: 64}}\n")
    b = _backend(_annotate_args("--backend", str(tmp_path / "run.yaml")))
    assert b.model == "tiny-phi3" and b.sampling.max_tokens == 64
    (tmp_path / "bad.yaml").write_text("kind: openai\nmodel: m\n")
    with pytest.raises(UserError, match=r"bad\.yaml: invalid backend"):
        _backend(_annotate_args("--backend", str(tmp_path / "bad.yaml")))
    with pytest.raises(UserError, match="needs a teacher"):
        _backend(_annotate_args())


def test_annotate_output_directory_reads_as_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "id": "a",
            "text": "t1",
            "score": 4,
            "teacher": "vllm:m",
            "prompt_version": PROMPT_VERSION,
            "url": "https://x.org/1",
        },
        {
            "id": "b",
            "text": "t2",
            "score": 1,
            "teacher": "vllm:m",
            "prompt_version": PROMPT_VERSION,
            "url": "https://x.org/2",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "labels.parquet")
    pq.write_table(pa.table({"id": ["c"], "reply": ["no score"]}), tmp_path / "unparsed.parquet")
    (tmp_path / "annotate.json").write_text("{}")
    labels = read_labels([str(tmp_path)])
    assert labels.texts == ["t1", "t2"] and labels.groups == [
        "x.org",
        "x.org",
    ]  # same site: same side of the split
    assert labels.source_description() == f"teacher LLM vllm:m (rubric {PROMPT_VERSION})"
