"""Shared by bench/decontam_quality.py and bench/decontam_speed.py: the demo documents, benchmark items as
they leak into web text (verbatim and reformatted), and datatrove's n-gram index over the same items."""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._dedup_common import demo_docs, onestopenglish  # noqa: E402
from pipeline.stages.decontaminate.config import DecontaminateConfig  # noqa: E402

BENCHMARKS = DecontaminateConfig().benchmarks  # the bundled sets, as the stage reads them


def corpus(output: str) -> pa.Table:
    """(id, text) of every demo document: the ingested web pages and the OneStopEnglish articles."""
    web = demo_docs(output)
    return pa.concat_tables([web, onestopenglish().cast(web.schema)])


def items() -> dict[str, list[dict]]:
    """benchmark -> items as {id, text (what leaks: question + correct answer, problem + solution)}."""
    out = {}
    for b in BENCHMARKS:
        with gzip.open(b.resolved_path(), "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out[b.label] = [
            {
                "id": str(r[b.id_field]) if b.id_field else f"line {n}",
                "text": "\n".join(
                    [str(r[f]) for f in b.fields] + ([str(r[r[b.answer_field]])] if b.answer_field else [])
                ),
            }
            for n, r in enumerate(rows, start=1)
        ]
    return out


def perturb(text: str, rng: random.Random) -> str:
    """The item reformatted the way pages copy it: case, quotes and punctuation, spacing, line breaks."""
    out = []
    for w in text.split():
        r = rng.random()
        w = w.upper() if r < 0.1 else w.lower() if r < 0.3 else w.capitalize() if r < 0.4 else w
        w = w.replace("'", "’").replace('"', "“").replace(",", " ;").replace("?", " ?!").replace(":", " -")
        out.append(w + rng.choice([" ", " ", "  ", "\n", " \n\n", "\t"]))
    return "".join(out)


def plant(host: str, leak: str, rng: random.Random) -> str:
    """The leak between two paragraphs of a real document."""
    paras = host.split("\n")
    at = rng.randrange(len(paras) + 1)
    return "\n".join(paras[:at] + [leak] + paras[at:])


def datatrove_index(folder: str, n: int = 13) -> None:
    """datatrove's index files for the same items and n: hashes from NGramsDecontIndexer.compute_hashes.

    The indexer's run() loads benchmarks only through lighteval (a download, and not installed here), so
    its own hashing method is called on the items' text (label only: the whole item text) and the files
    are written as run() writes them: one `<task>.index.hashes` array of uint64 per benchmark."""
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontIndexer
    from datatrove.utils.hashing import create_hash_func
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    config = NGramsDecontConfig(n_grams=n, find_query_ngrams=True, find_overlap_ngrams=False)
    me = SimpleNamespace(
        config=config, tokenizer=load_word_tokenizer("en"), hash_func=create_hash_func(config.hash_config)
    )
    os.makedirs(folder, exist_ok=True)
    for name, rows in items().items():
        hashes = set()
        for r in rows:
            hashes.update(NGramsDecontIndexer.compute_hashes(me, r["text"]))
        np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(
            os.path.join(folder, f"{name}.index.hashes")
        )


def datatrove_filter(folder: str, n: int = 13):
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter

    return NGramsDecontFilter(folder, config=NGramsDecontConfig(n_grams=n))
