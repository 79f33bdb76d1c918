"""tune --serve: the page's counts must be what `phicurate tune` reports and what `select` then keeps with
the section the page writes; the server's evaluation must equal rules.py's first failing rule."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from pipeline import storage
from pipeline.config import load_config
from pipeline.runner import read_record, run_pipeline
from pipeline.stages.annotate.signals import SIGNAL_FIELDS
from pipeline.stages.select import rules
from pipeline.stages.select.config import SelectConfig
from pipeline.tools import tune_params
from pipeline.tools.cli import main
from pipeline.tools.tune import tune
from pipeline.tools.tune_server import Signals
from tests.browser import open_page
from tests.conftest import DATA, ROOT

QUIET = dict(log=lambda m: None)


def _signal_table(n: int, rng: np.random.Generator) -> pa.Table:
    """Every column annotate writes, with values spread over each rule's threshold (nulls included)."""
    cols: dict[str, pa.Array] = {
        "id": pa.array([f"d{i}" for i in range(n)]),
        "source": pa.array(rng.choice(["web/a", "web/b", "web/c"], n)),
        "text": pa.array([f"document {i}" for i in range(n)]),
    }
    for f in SIGNAL_FIELDS:
        if f.name == "lang":
            cols[f.name] = pa.array(rng.choice(["en", "fr", "de"], n, p=[0.8, 0.1, 0.1]))
        elif pa.types.is_integer(f.type):
            v = rng.integers(-1 if f.name.startswith("c4_") else 0, 400, n)
            cols[f.name] = pa.array(v, f.type, mask=(rng.random(n) < 0.1) & (f.name != "n_words"))
        else:
            cols[f.name] = pa.array(rng.random(n), f.type, mask=rng.random(n) < 0.05)
    cols["edu_score"] = pa.array(rng.random(n))
    return pa.table(cols)


def test_server_totals_equal_rules_first_failure(tmp_path):
    rng = np.random.default_rng(1)
    out = str(tmp_path / "out")
    (tmp_path / "out" / "annotate").mkdir(parents=True)
    table = _signal_table(3000, rng)
    pq.write_table(table.slice(0, 1700), f"{out}/annotate/part-0.parquet")
    pq.write_table(table.slice(1700), f"{out}/annotate/part-1.parquet")
    base = SelectConfig(edu_score=None, c4_quality=None)
    sig = Signals(out, base)
    keys = {p.key: p for p in sig.params}
    assert {"edu_score", "c4_quality", "gopher_repetition.top_n_grams.3", "lang"} <= set(keys)
    words = table["n_words"].to_numpy()
    for trial in range(12):  # random settings on and off, thresholds moved, whole filters off
        values, on = {}, {}
        for p in sig.params:
            if p.kind == "number":
                values[p.key] = int(rng.integers(0, 300)) if p.integer else float(rng.random())
            elif p.kind == "bool":
                values[p.key] = bool(rng.random() < 0.5)
            elif p.kind == "lang":
                values[p.key] = ["en", "de"][: 1 + trial % 2]
            on[p.key] = bool(rng.random() < 0.85) if p.off or p.kind == "section" else True
        cfg = tune_params.build(base, sig.params, values, on)
        got = sig.evaluate(cfg, active=sig.params[1 + trial % (len(sig.params) - 1)].key)
        reason, _ = rules.first_failure(table, cfg)
        kept = pc.is_null(reason).to_numpy(zero_copy_only=False)
        assert got["kept_docs"] == int(kept.sum()) and got["kept_tokens"] == int(words[kept].sum()), trial
        counts = pc.value_counts(reason.drop_null()).to_pylist()
        assert {d["reason"]: d["docs"] for d in got["drops"] if d["docs"]} == {
            c["values"]: c["counts"] for c in counts
        }
        assert [d["reason"] for d in got["drops"]] == [r.reason for r in rules.rules(cfg)]
        for s in got["sources"]:
            mine = kept & (table["source"].to_numpy(zero_copy_only=False) == s["source"])
            assert (s["kept_docs"], s["kept_tokens"]) == (int(mine.sum()), int(words[mine].sum()))
        if got.get("margin"):  # the documents passing every other rule nearest the threshold, each side
            m, mine, rule_list = got["margin"], keys[got["active"]].reasons, rules.rules(cfg)
            rule = next(r for r in rule_list if r.reason in mine and r.keeps_above is not None)
            fails = rule.fails(table).to_numpy(zero_copy_only=False)
            others = np.zeros(len(table), bool)
            for r in rule_list:
                if r.reason not in mine:
                    others |= r.fails(table).to_numpy(zero_copy_only=False)
            v = pc.cast(table[rule.column], pa.float64()).to_numpy(zero_copy_only=False)
            dist = np.abs(v - rule.threshold)
            for side, failing in (("kept", False), ("dropped", True)):
                rows = np.array([d["row"] for d in m[side]], dtype=np.int64)
                cand = ~others & (fails == failing) & ~np.isnan(v)
                assert len(rows) == min(5, int(cand.sum())), (trial, side)
                if len(rows):
                    assert (fails[rows] == failing).all() and not others[rows].any()
                    assert dist[rows].max() <= np.sort(dist[cand])[len(rows) - 1]

    # Off means off in the written section, and writing reads back as the same rules.
    cfg = tune_params.build(
        base, sig.params, {"edu_score": 0.4}, {"edu_score": True, "gopher_quality": False}
    )
    assert cfg.edu_score == 0.4 and cfg.gopher_quality is None and cfg.c4_quality is None
    off = tune_params.build(base, sig.params, {}, {"gopher_repetition.top_n_grams.2": False})
    assert 2 not in off.gopher_repetition.top_n_grams and 3 in off.gopher_repetition.top_n_grams


def test_write_replaces_only_the_select_section(tmp_path, write_config):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "# my recipe\nrun: {output: out/x}\n\ningest:\n  inputs:\n"
        "    - {path: tests/data/demo/onestopenglish.jsonl.zst, source: web/a}\n\n"
        "select:\n  lang: [en]   # English only\n  edu_score: 0.2\n\n# dedup below\ndedup: {}\n"
    )
    cfg = SelectConfig(edu_score=0.35, fineweb_quality=None)
    target = tmp_path / "tuned.yaml"
    assert "recipe.yaml's recipe" in tune_params.write(str(target), cfg, str(recipe))
    text = target.read_text()
    assert text.startswith("# my recipe\n") and "# dedup below\ndedup: {}\n" in text
    assert load_config(target).select == cfg and load_config(target).dedup is not None
    assert main(["validate", str(target)]) == 0
    again = SelectConfig(edu_score=0.5)
    tune_params.write(str(target), again, None)  # an existing recipe: its own select section replaced
    assert load_config(target).select == again and "# dedup below" in target.read_text()


def _two_source_corpus(tmp_path, n: int) -> list[dict]:
    src = DATA / "demo" / "onestopenglish.jsonl.zst"
    lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(src, "rb")), encoding="utf-8")
    rows = [next(lines) for _ in range(n)]
    inputs = []
    for name, part in (("a", rows[: n // 2]), ("b", rows[n // 2 :])):
        (tmp_path / f"{name}.jsonl").write_text("".join(part))
        inputs.append({"path": str(tmp_path / f"{name}.jsonl"), "source": f"web/{name}"})
    return inputs


def _idle(driver, timeout: float = 30) -> None:
    end = time.time() + timeout
    while driver.execute_script("return document.body.dataset.busy") != "0":
        assert time.time() < end, "the page did not answer"
        time.sleep(0.05)


def _shown(driver) -> dict:
    return driver.execute_script(
        "const v = (id) => Number(document.getElementById(id).dataset.value);"
        "return {docs: v('kept-docs'), tokens: v('kept-tokens'), error: document.getElementById('error')"
        ".textContent, sources: Object.fromEntries([...document.querySelectorAll('#sources tr[data-source]')]"
        ".map(tr => [tr.dataset.source, [Number(tr.children[1].dataset.value),"
        " Number(tr.children[3].dataset.value)]])), drops: Object.fromEntries([...document.querySelectorAll("
        "'#drops tr[data-reason]')].map(tr => [tr.dataset.reason, Number(tr.children[1].dataset.value)]))}"
    )


@pytest.mark.slow
def test_page_counts_equal_tune_and_select(ray_local, write_config, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base = write_config(
        {"ingest": {"inputs": _two_source_corpus(tmp_path, 60)}, "annotate": {"workers": 1, "batch_size": 16}}
    )
    out = load_config(base).run.output
    run_pipeline(load_config(base), stages=["ingest", "annotate"], **QUIET)
    written = tmp_path / "tuned.yaml"
    cmd = [sys.executable, "-m", "pipeline.tools.cli", "tune", out, "--serve", "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--config", str(base), "--write", str(written)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    driver = None
    try:
        for line in proc.stdout:
            if "serving http://" in line:
                break
        assert "bound to 127.0.0.1: only this machine can reach it" in line, line
        url = line.split("serving ")[1].split()[0]
        driver, severe = open_page(url)
        assert severe == []
        _idle(driver)
        first = _shown(driver)
        assert first["docs"] > 0 and first["error"] == ""

        # Move two thresholds: one typed into its box, one dragged with the slider's arrow keys.
        punct = driver.find_element(By.CSS_SELECTOR, '[data-key="fineweb_quality.line_punct_thr"] .num')
        punct.clear()
        punct.send_keys("0.05", Keys.TAB)
        _idle(driver)
        slider = driver.find_element(By.CSS_SELECTOR, '[data-key="gopher_quality.min_doc_words"] .slider')
        slider.send_keys(*[Keys.ARROW_RIGHT] * 300)
        _idle(driver)
        min_words = int(
            driver.find_element(
                By.CSS_SELECTOR, '[data-key="gopher_quality.min_doc_words"] .num'
            ).get_attribute("value")
        )
        page = _shown(driver)
        assert page["error"] == "" and min_words > 50 and page["docs"] != first["docs"]
        margin = driver.find_elements(By.CSS_SELECTOR, "#margin-kept li, #margin-dropped li")
        assert margin and "gopher_words" in margin[0].text

        driver.find_element(By.ID, "write").click()
        end = time.time() + 20
        while "wrote" not in driver.find_element(By.ID, "write-message").text:
            assert time.time() < end and "error" not in driver.find_element(By.ID, "write-message").text
            time.sleep(0.1)
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)

    assert main(["validate", str(written)]) == 0
    tuned = load_config(written)
    assert tuned.select.fineweb_quality.line_punct_thr == 0.05
    assert tuned.select.gopher_quality.min_doc_words == min_words
    assert tuned.ingest == load_config(base).ingest  # the rest of the recipe is --config's

    # `phicurate tune` on each moved rule, at the written threshold, with the other written rules.
    for signal, t in (
        ("gopher_quality:gopher_short_doc", min_words),
        ("fineweb_quality:line_punct_ratio", 0.05),
    ):
        s = tune(out, signal, config_path=str(written), at=[t], out=io.StringIO())
        assert s.rows[0][1:] == (page["docs"], page["tokens"]), signal

    # A real select run with the written section keeps exactly the page's documents, per source too.
    rec = {r["stage"]: r for r in run_pipeline(tuned, stages=["select"], **QUIET)}["select"]
    assert (rec["docs_out"], rec["tokens_out"]) == (page["docs"], page["tokens"])
    assert rec["dropped"] == {k: v for k, v in page["drops"].items() if v}
    kept = pa.concat_tables(pq.read_table(f) for f in storage.list_files(f"{out}/select", suffix=".parquet"))
    by_source = {
        r["source"]: r["id_count"] for r in kept.group_by("source").aggregate([("id", "count")]).to_pylist()
    }
    assert by_source == {k: v[0] for k, v in page["sources"].items() if v[0]}
    assert read_record(out, "select")["docs_out"] == page["docs"]

    # --write from the command line: the same recipe with one threshold moved, accepted by validate.
    again = tmp_path / "again.yaml"
    args = [
        "tune",
        out,
        "--signal",
        "gopher_quality:gopher_short_doc",
        "--at",
        "120",
        "--config",
        str(written),
    ]
    assert main([*args, "--write", str(again)]) == 0
    assert main(["validate", str(again)]) == 0
    moved = load_config(again).select
    assert moved.gopher_quality.min_doc_words == 120
    assert moved.model_copy(update={"gopher_quality": tuned.select.gopher_quality}) == tuned.select
    assert yaml.safe_load(again.read_text())["ingest"] == yaml.safe_load(written.read_text())["ingest"]
