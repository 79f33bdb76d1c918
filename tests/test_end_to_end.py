"""The whole demo config, end to end on a reduced corpus, and its report rendered in headless Chromium."""

import io
import os

import pytest
import yaml
import zstandard
from warcio.archiveiterator import ArchiveIterator
from warcio.warcwriter import WARCWriter

from classifiers.train import TrainParams, train
from pipeline.config import load_config
from pipeline.runner import read_record, run_pipeline
from pipeline.tools.report import write_report
from tests.browser import broken_images, funnel_numbers, open_page
from tests.conftest import DATA, ROOT


def _head_warc(src, dst, n):
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        w = WARCWriter(fo, gzip=True)
        for i, rec in enumerate(ArchiveIterator(fi)):
            if i >= n:
                break
            w.write_record(rec)


def _head_jsonl_zst(src, dst, n):
    lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(src, "rb")), encoding="utf-8")
    rows = [next(lines) for _ in range(n)]
    dst.write_bytes(zstandard.ZstdCompressor().compress("".join(rows).encode()))


@pytest.fixture
def reduced_demo(tmp_path):
    """configs/demo.yaml with the corpus cut to its first documents per file (same formats, same sources)."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for inp in cfg["ingest"]["inputs"]:
        src = ROOT / inp["path"]
        dst = corpus / src.name
        if src.name.endswith(".warc.gz"):
            _head_warc(src, dst, 80)
        else:
            _head_jsonl_zst(src, dst, 120)
        inp["path"] = str(dst)
    cfg["run"]["output"] = str(tmp_path / "out")
    # The classifier `make demo` trains first, trained the same way into this test's directory.
    train([str(DATA / "labels" / "edu-reference.jsonl.zst")], str(tmp_path / "edu"), TrainParams(threshold=1))
    cfg["annotate"]["edu_model"] = str(tmp_path / "edu" / "model.ftz")
    cfg["ray"].update(object_store_memory_mb=512, progress_bars=False)
    p = tmp_path / "demo-reduced.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.slow
def test_demo_end_to_end_and_report(reduced_demo, tmp_path, ray_local):
    config = load_config(reduced_demo)
    records = run_pipeline(config)
    out = str(tmp_path / "out")
    assert [r["stage"] for r in records] == config.stages()
    for r in records:
        assert r["docs_in"] == r["docs_out"] + sum(r["dropped"].values()), r["stage"]

    page = write_report(out)
    driver, severe = open_page(os.path.abspath(page))
    try:
        assert severe == []
        assert broken_images(driver) == []
        shown = funnel_numbers(driver)
        for stage in config.stages():
            if stage == "train":
                continue
            rec = read_record(out, stage)
            assert shown[stage] == {
                "docs_in": rec["docs_in"],
                "docs_out": rec["docs_out"],
                "dropped": sum(rec["dropped"].values()),
                "tokens_out": rec["tokens_out"],
            }, stage
        n_images = driver.execute_script("return document.images.length")
        assert n_images >= 4
    finally:
        driver.quit()
