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
from pipeline.registry import BY_NAME
from pipeline.runner import read_record, run_pipeline
from pipeline.tools.report import write_report
from pipeline.tools.status import print_status
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
    """configs/demo.yaml with the corpus cut to its first documents per file (same formats, same sources) and
    a shorter training."""
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
    # 5 steps a phase instead of 20: bf16 matmuls on a CPU without native bf16 take ~2.5 s a step here
    cfg["train"]["max_phase_tokens"] //= 4
    p = tmp_path / "demo-reduced.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _check_chain(config, out: str) -> None:
    """The chain of counts, from the `_stage.json` records alone: each stage's documents in are what the
    stage it reads kept (mix: what each phase's sources read), and what ingest saw is what decontaminate
    kept plus every drop on the way."""
    rec = {s: read_record(out, s) for s in config.stages()}
    for s, r in rec.items():
        assert r["docs_in"] == r["docs_out"] + sum(r["dropped"].values()), s
    for s in ("annotate", "select", "dedup", "decontaminate"):
        [up] = BY_NAME[s].inputs(config)
        assert rec[s]["docs_in"] == rec[up]["docs_out"], (s, up)
    read = sum(rec[src.stage]["docs_out"] for r in config.mix.recipes().values() for src in r.sources)
    assert rec["mix"]["docs_in"] == read
    line = ["ingest", "annotate", "select", "dedup", "decontaminate"]
    assert rec["ingest"]["docs_in"] == rec["decontaminate"]["docs_out"] + sum(
        n for s in line for n in rec[s]["dropped"].values()
    )
    assert rec["select"]["docs_out"] < rec["select"]["docs_in"]  # something is dropped on the way


@pytest.mark.slow
def test_demo_end_to_end_and_report(reduced_demo, tmp_path, ray_local):
    config = load_config(reduced_demo)
    records = run_pipeline(config)
    out = str(tmp_path / "out")
    assert [r["stage"] for r in records] == config.stages()
    _check_chain(config, out)
    assert print_status(out) == []  # and status sees the chain hold

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
