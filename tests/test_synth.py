"""Synth without the engine: deterministic prompts and seeds, the resume cache, quality checks, config
errors."""

import json

import pyarrow as pa
import pytest

from pipeline.config import parse_config
from pipeline.errors import UserError
from pipeline.stages.synth.config import QCConfig
from pipeline.stages.synth.qc import check, distinct_ngram_ratio
from synth import cache
from synth.backends import BackendConfig, generate, generation_key
from synth.prompts import PromptsConfig, build_prompts
from synth.seeds import WebSeedsConfig, passage, topic_seeds, web_seeds

TOPICS = {"biology": ["photosynthesis", "cell division"], "computer science": ["recursion"]}
ENGLISH = (
    "Photosynthesis is the process by which green plants use sunlight to make their own food. Inside the "
    "leaves, "
    "tiny structures called chloroplasts capture light energy. The plant takes in water through its roots "
    "and "
    "carbon dioxide from the air. Using the energy of light, it turns these into glucose, a sugar that "
    "stores "
    "energy, and releases oxygen as a by-product. This is why forests are sometimes called the lungs of the "
    "Earth."
)


def test_prompts_are_deterministic_and_cover_the_cells():
    cfg = PromptsConfig(samples_per_cell=2)
    a = build_prompts(topic_seeds(TOPICS), cfg)
    b = build_prompts(topic_seeds(TOPICS), cfg)
    assert a == b and len(a) == 3 * 4 * 4 * 2
    assert len({p["id"] for p in a}) == len(a)  # sample k gives a distinct id for the same text
    assert len({(p["audience"], p["style"]) for p in a}) == 16
    first = a[0]
    assert '"photosynthesis" (a topic in biology)' in first["prompt"] and "young children" in first["prompt"]

    few = build_prompts(topic_seeds(TOPICS), PromptsConfig(cells_per_seed=3))
    assert len(few) == 9 and few == build_prompts(topic_seeds(TOPICS), PromptsConfig(cells_per_seed=3))
    assert len({(p["audience"], p["style"]) for p in few}) > 3  # seeds get different cells


def test_prompt_templates_are_validated():
    with pytest.raises(ValueError, match="style 'bad': the template must use exactly"):
        PromptsConfig(styles={"bad": "Write about {seed}"})
    with pytest.raises(UserError, match=r"synth.topics: .*subject 'biology': give a non-empty list"):
        parse_config(
            {
                "ingest": {"inputs": [{"path": "tests/data/demo", "source": "web/x"}]},
                "synth": {"backend": {"model": "tiny-phi3"}, "topics": {"biology": []}},
            }
        )
    with pytest.raises(UserError, match=r"synth.backend: .*kind 'openai' needs an 'openai' section"):
        parse_config(
            {
                "ingest": {"inputs": [{"path": "tests/data/demo", "source": "web/x"}]},
                "synth": {"backend": {"model": "m", "kind": "openai"}},
            }
        )


def test_web_seeds_sample_deterministically_from_educational_docs(ray_local):
    rows = [
        {
            "id": f"d{i}",
            "text": f"Document {i}. " + ENGLISH * 3,
            "source": "web/a" if i % 2 else "web/b",
            "url": f"http://x/{i}",
            "edu_score": float(i % 5),
        }
        for i in range(40)
    ]
    cfg = WebSeedsConfig(count=5, min_edu_score=3.0, sources=["web/a"], passage_chars=300)
    one = web_seeds(ray_local.data.from_items(rows, override_num_blocks=4), cfg)
    two = web_seeds(ray_local.data.from_items(rows[::-1], override_num_blocks=7), cfg)
    assert one == two and len(one) == 5  # same sample whatever the order and block layout
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[s.seed_id]["edu_score"] >= 3 and s.subject == "web/a" for s in one)
    assert all(len(s.passage) <= 300 and s.passage.endswith(".") for s in one)
    no_edu = ray_local.data.from_items([{k: v for k, v in r.items() if k != "edu_score"} for r in rows])
    with pytest.raises(UserError, match="no edu_score column"):
        web_seeds(no_edu, cfg)


def test_passage_cuts_at_a_sentence_end():
    assert passage("One. Two three. Four five six seven", 20) == "One. Two three."


def test_resume_from_cache_starts_no_engine(ray_local, tmp_path):
    """Every prompt already cached: generate() returns the cached text without loading any model."""
    cfg = BackendConfig(model="no/such-model-would-load")  # an engine start would fail loudly
    prompts = [{"id": f"p{i}", "prompt": f"Explain {i}."} for i in range(5)]
    done = pa.table(
        {
            "id": [p["id"] for p in prompts],
            "generation": [f"text {i}" for i in range(5)],
            "gen_tokens": [2] * 5,
            "finish_reason": ["stop"] * 5,
            "error": [None] * 5,
        }
    )
    cache.write_part(str(tmp_path / generation_key(cfg)), done)
    out = generate(prompts, cfg, cache_dir=str(tmp_path))
    assert [r["generation"] for r in out] == [f"text {i}" for i in range(5)]
    assert all(r["cached"] and r["error"] is None for r in out)
    other = BackendConfig(model="no/such-model-would-load", sampling={"temperature": 0.1})
    assert generation_key(other) != generation_key(cfg)  # other sampling: the cache does not apply


def test_cache_keeps_successes_only_and_one_row_per_prompt(tmp_path):
    t = pa.table(
        {
            "id": ["a", "b", "c"],
            "generation": ["x", "y", None],
            "gen_tokens": [1, 2, 0],
            "finish_reason": ["stop", "length", None],
            "error": [None, None, "ConnectionError"],
        }
    )
    cache.write_part(str(tmp_path), t)
    cache.write_part(str(tmp_path), t.slice(0, 1))
    got = cache.read(str(tmp_path))
    assert sorted(got["id"].to_pylist()) == ["a", "b"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_quality_checks_drop_noise_and_keep_english_prose():
    noise = "nodes Vladimir Blaдол cultivшлиmlsingleÜläu ampaieseptaęż intellectual animalspaddingGreen " * 12
    batch = pa.table(
        {
            "id": ["good", "noise", "short", "failed"],
            "text": [ENGLISH, noise, "Too short.", ""],
            "finish_reason": ["stop", "length", "stop", None],
            "drop_reason": [None, None, None, "generation_failed"],
            "drop_detail": [None, None, None, "APIConnectionError: Connection error."],
        }
    )
    out = check(batch, QCConfig(min_words=20)).to_pylist()
    assert out[0]["drop_reason"] is None and out[0]["lang"] == "en"
    assert out[1]["drop_reason"] is not None  # language or repetition rules catch the noise
    assert (out[2]["drop_reason"], out[2]["drop_detail"]) == ("too_short", "2 words < 20")
    assert out[3]["drop_reason"] == "generation_failed"  # the first failing check wins
    cut = check(batch.slice(1, 1), QCConfig(min_words=0, drop_truncated=True, filters=None)).to_pylist()
    assert cut[0]["drop_reason"] == "truncated"


def test_distinct_ngrams():
    assert distinct_ngram_ratio(["a b c d e", "a b c d e"]) == 0.5
    assert distinct_ngram_ratio(["x"]) is None
    assert json.dumps(distinct_ngram_ratio([ENGLISH])) == "1.0"
