"""`phicurate ablate CONFIG`: the same model trained on each arm at equal tokens, steps and seeds, then
scored on the same held-out sets.

Everything runs through the pipeline's own runner, so nothing shared is computed twice:
1. the base config's stages that the arms read (and their upstream) run as in `phicurate run`, skipped when
   unchanged;
2. the held-out sets are drawn (ABL/heldout/sets.json) and each stage the arms read is rewritten without
   them (ABL/pool/STAGE, a complete stage directory, rewritten only when the base stage or the sets change);
3. each arm is a copy of the base config that differs only in its mix recipe, with its own output
   ABL/arms/ARM whose stage directories link to the pool: the runner's `mix` there writes the arm's shards
   (and skips when recipe and pool are unchanged);
4. each arm and seed is the base train section with that seed, the arm's mix and the ablation's token
   budget, in its own output ABL/runs/ARM/seed-S (skipped when unchanged), then scored (eval.json, kept
   while the model and the sets are unchanged). With `workers: ray` each is one Ray task, so a cluster
   spreads them over its nodes (`num_gpus: 1` for one GPU each);
5. ABL/ablation.json, ablation.md (the table) and ablation.png (the plot) compare the arms over the seeds.
"""

from __future__ import annotations

import os
import time

import yaml

from pipeline import ownership, storage
from pipeline.config import Config, parse_config
from pipeline.errors import UserError
from pipeline.registry import BY_NAME, ORDER
from pipeline.tools.ablate import heldout, stats
from pipeline.tools.ablate.spec import AblateSpec

EVAL = "eval.json"
MAX_MARGIN_TRIES = 4  # each try doubles the mix's token margin over the training budget


def _upstream(stages: set[str], config: Config) -> list[str]:
    """The stages given and every stage they read, in pipeline order."""
    todo, seen = list(stages), set()
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo += list(BY_NAME[s].inputs(config))
    return [s for s in ORDER if s in seen]


def _as_weights(recipe: dict, tokens: int) -> dict:
    """A phase recipe at `tokens` tokens: its weights, or its per-source token counts as shares."""
    sources = [dict(s) for s in recipe["sources"]]
    if sources[0].get("tokens") is not None:
        total = sum(s["tokens"] for s in sources)
        for s in sources:
            s["weight"], s["tokens"] = s["tokens"] / total, None
        sources[-1]["weight"] = 1.0 - sum(s["weight"] for s in sources[:-1])
    return {"tokens": tokens, "sources": sources}


def arm_recipes(arm: str, spec: AblateSpec, config: Config) -> dict:
    """{phase1, phase2} of the arm's mix, before the phase budget is set."""
    one = {
        "raw": [{"name": "raw", "stage": "ingest", "weight": 1.0}],
        "filtered": [{"name": "filtered", "stage": "select", "weight": 1.0}],
        # the held-out documents are few: repeated as often as the budget asks
        "heldout-leak": [{"name": "heldout", "stage": "ingest", "weight": 1.0, "max_epochs": 1e6}],
    }
    if arm in one:
        return {p: {"sources": one[arm]} for p in ("phase1", "phase2")}
    recipe = config.mix if arm == "curated" else spec.recipes[arm]
    return {p: getattr(recipe, p).model_dump(mode="json") for p in ("phase1", "phase2")}


def _budget(spec: AblateSpec, config: Config) -> int:
    """Training tokens per phase."""
    phases = len(config.train.phases)
    total = spec.tokens or (config.train.max_phase_tokens and config.train.max_phase_tokens * phases)
    if not total:
        raise UserError(
            "the ablation needs a token count: give --tokens (or `tokens:`), or train.max_phase_tokens"
        )
    per = total // phases
    if per < config.train.context + 1:
        raise UserError(f"--tokens {total}: under one sequence of {config.train.context + 1} tokens a phase")
    return per


def _absolute(path: str) -> str:
    return path if "://" in path or not os.path.exists(path) else os.path.abspath(path)


def arm_config(arm: str, spec: AblateSpec, config: Config, arm_dir: str, mix_tokens: int) -> Config:
    data = config.model_dump(mode="json")
    data["run"] = {**data["run"], "name": f"{config.run.name}-{arm}", "output": arm_dir, "stages": None}
    data["mix"] = {**data["mix"], "tokenizer": _absolute(config.mix.tokenizer)}
    for phase, recipe in arm_recipes(arm, spec, config).items():
        data["mix"][phase] = _as_weights(recipe, mix_tokens)
    return parse_config(data, f"ablation arm '{arm}'")


def run_config(arm_cfg: Config, seed: int, run_dir: str, per_phase: int) -> Config:
    """The arm's config training with `seed` on its own mix for `per_phase` tokens a phase, into run_dir.

    Held-out sequences of the trainer's own are off: the ablation's held-out sets are the evaluation."""
    data = arm_cfg.model_dump(mode="json")
    data["run"] = {**data["run"], "name": f"{arm_cfg.run.name}-s{seed}", "output": run_dir}
    data["train"] = {
        **data["train"],
        "seed": seed,
        "mix_dir": storage.join(arm_cfg.run.output, "mix"),
        "max_phase_tokens": per_phase,
        "heldout_sequences": 0,
        "state_dir": None,
        "save_model": True,
    }
    return parse_config(data, f"ablation run '{arm_cfg.run.name}' seed {seed}")


def _link(target: str, link: str) -> None:
    """link -> target, replacing a link that points elsewhere (a real directory there is an error)."""
    if os.path.islink(link):
        if os.readlink(link) == target:
            return
        os.unlink(link)
    elif os.path.exists(link):
        raise UserError(f"{link}: expected a link to {target} made by the ablation; remove it and rerun")
    os.symlink(target, link)


def train_and_score(cfg_data: dict, sets_path: str) -> dict:
    """Train one arm and seed through the runner (skipped when unchanged) and score its model.

    A module-level function so that it runs as a Ray task on a cluster as well as in this process."""
    from pipeline.runner import run_pipeline

    cfg = parse_config(cfg_data, "ablation run")
    (record,) = run_pipeline(cfg, stages=["train"], log=lambda m: print(f"[{cfg.run.name}] {m}"))
    sets = heldout.read_sets(sets_path)
    key = {"train": {k: record[k] for k in ("config_hash", "input_fingerprint")}, "sets": sets["fingerprint"]}
    path = os.path.join(cfg.run.output, EVAL)
    old = storage.read_json(path)
    if old and old.get("key") == key:
        return old
    from pipeline.tools.ablate.evaluate import evaluate

    t0 = time.perf_counter()
    scores = evaluate(
        os.path.join(cfg.run.output, "train", "model"), sets, cfg.train.context, cfg.train.device
    )
    d = record["details"]
    out = {
        "key": key,
        "eval": scores,
        "train": {"steps": d["total_steps"], "tokens": record["tokens_out"], "final_loss": d["final_loss"]},
        "eval_s": round(time.perf_counter() - t0, 2),
    }
    storage.write_json(path, out)
    return out


def ablate(spec: AblateSpec, config: Config, log=print) -> dict:
    """Run the whole ablation; return what ablation.json holds."""
    import ray

    from pipeline.runner import run_pipeline
    from pipeline.runtime import init_ray

    t_start = time.perf_counter()
    abl = os.path.abspath(spec.output or storage.join(config.run.output, "ablate"))
    per_phase = _budget(spec, config)
    recipes = {arm: arm_recipes(arm, spec, config) for arm in spec.arms}
    read = {s["stage"] for r in recipes.values() for p in r.values() for s in p["sources"]}
    base_stages = _upstream(read | {"ingest"}, config)
    log(f"[ablate] base stages {', '.join(base_stages)} in {config.run.output}")
    run_pipeline(config, stages=base_stages)

    sets = heldout.build_sets(spec.heldout, config.run.output, config.mix.tokenizer)
    sets_path = os.path.join(abl, "heldout", heldout.SETS)
    heldout.write_sets(sets, sets_path)
    counts = {name: len(s["items"]) for name, s in sets["sets"].items()}
    log(f"[ablate] held-out sets {counts} (fingerprint {sets['fingerprint']})")
    pools = {}
    for stage in sorted(read):
        pools[stage] = heldout.write_pool(config.run.output, stage, os.path.join(abl, "pool", stage), sets)
        log(f"[ablate] pool {stage}: {pools[stage]['docs_out']} docs, removed {pools[stage]['dropped']}")
    if "heldout-leak" in spec.arms:
        heldout.write_leak_pool(config.run.output, os.path.join(abl, "heldout", "leak"), sets)

    arm_cfgs = {}
    for arm in spec.arms:
        arm_dir = os.path.join(abl, "arms", arm)
        ownership.check_output(arm_dir)  # the arm's own output, claimed before its links are made
        stages = {s["stage"] for p in recipes[arm].values() for s in p["sources"]}
        for stage in stages:
            leak = arm == "heldout-leak"
            _link(
                os.path.join(abl, "heldout", "leak") if leak else os.path.join(abl, "pool", stage),
                os.path.join(arm_dir, stage),
            )
        arm_cfgs[arm] = _mix_arm(arm, spec, config, arm_dir, per_phase, log)

    init_ray(config.ray)
    jobs = []
    for arm in spec.arms:
        for seed in range(spec.seeds):
            run_dir = os.path.join(abl, "runs", arm, f"seed-{seed}")
            data = run_config(arm_cfgs[arm], seed, run_dir, per_phase).model_dump(mode="json")
            os.makedirs(os.path.dirname(run_dir), exist_ok=True)
            with open(f"{run_dir}.yaml", "w", encoding="utf-8") as f:
                yaml.safe_dump(data, f, sort_keys=False)  # `phicurate train` reproduces the run
            jobs.append((arm, seed, data))
    if spec.workers == "ray":
        task = ray.remote(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_retries=0)(train_and_score)
        results = ray.get([task.remote(data, sets_path) for _, _, data in jobs])
    else:
        results = [train_and_score(data, sets_path) for _, _, data in jobs]
    runs = [{"arm": arm, "seed": seed, **r} for (arm, seed, _), r in zip(jobs, results)]
    steps = {(r["arm"], r["seed"]): r["train"]["steps"] for r in runs}
    if len(set(steps.values())) != 1:
        raise RuntimeError(f"arms trained for different numbers of steps: {steps}")

    result = stats.compare(runs, spec.arms)
    result["chance"] = {m: runs[0]["eval"][m]["chance"] for m in result["metrics"] if m.endswith("_acc")}
    out = {
        "base": spec.base,
        "arms": spec.arms,
        "seeds": spec.seeds,
        "tokens_per_arm": per_phase * len(config.train.phases),
        "steps": runs[0]["train"]["steps"],
        "model": config.train.model,
        "heldout": {"fingerprint": sets["fingerprint"], "items": counts, "ngram": sets["ngram"]},
        "pools": {s: {"docs_out": r["docs_out"], "dropped": r["dropped"]} for s, r in pools.items()},
        "runs": [{k: r[k] for k in ("arm", "seed", "eval", "train")} for r in runs],
        **result,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    storage.write_json(os.path.join(abl, "ablation.json"), out)
    title = (
        f"{config.run.name}: {config.train.model} model, {out['tokens_per_arm']:,} tokens, {spec.seeds} seeds"
    )
    stats.plot(result, os.path.join(abl, "ablation.png"), title)
    text = stats.table(result)
    with open(os.path.join(abl, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(f"# Ablation: {title}\n\n{text}\n![ablation](ablation.png)\n")
    log(text)
    log(f"[ablate] {os.path.join(abl, 'ablation.md')} (plot ablation.png) in {out['wall_s']:.0f}s")
    return out


def _mix_arm(arm: str, spec: AblateSpec, config: Config, arm_dir: str, per_phase: int, log) -> Config:
    """Run the arm's mix with a margin over the training budget, so that every arm trains the same steps:
    a phase sampled to within a document of its target may fall short; then the margin doubles."""
    from pipeline.runner import run_pipeline

    need = per_phase + config.train.context + 1
    margin = 2
    for _ in range(MAX_MARGIN_TRIES):
        cfg = arm_config(arm, spec, config, arm_dir, margin * per_phase + 2 * need)
        (record,) = run_pipeline(cfg, stages=["mix"], log=lambda m: log(f"[ablate {arm}] {m}"))
        short = {
            p: v["tokens"]
            for p, v in record["details"].items()
            if p.startswith("phase") and v["tokens"] < need
        }
        if not short:
            return cfg
        margin *= 2
    raise UserError(f"arm '{arm}': its mix holds {short} tokens, under the {need} a phase trains on")


def cli_ablate(path: str, arms: list[str] | None, seeds: int | None, tokens: int | None) -> None:
    from pipeline.tools.ablate.spec import load_spec

    spec, config = load_spec(path, arms=arms, seeds=seeds, tokens=tokens)
    ablate(spec, config)
