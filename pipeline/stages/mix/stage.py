"""Stage `mix`: phase-1 and phase-2 token mixes as shuffled Megatron shards with a manifest per phase.

Nothing per document reaches the driver; it plans from the Parquet footers and handles tallies of fixed
size and one result per shard:

1. **Tokenize.** Each stage output a recipe names is tokenized once, all of them in one Ray `map_batches`
   over runs of their Parquet row groups (each task reads its own rows; the fast tokenizer's batch
   encode, EOS after each document). Each task writes its documents' tokens, ids and `where` results as one
   Parquet part under `_tokenized/` in the stage's work directory (local or object store), then commits it
   (`_tokenized/_parts/<name>.json`, its row count) and returns the count. A task is named after the rows it
   reads, and the work directory after the config and input, so the rerun of a killed run tokenizes only the
   tasks that were not committed.
2. **Select.** Each document of a source gets a seeded hash, and with it one of 2**16 buckets. Ray tasks
   tally the tokens per bucket; from these tallies alone the driver fixes each source's cut
   (`recipes.cut`): whole passes, plus once more every document in the buckets below a bound, whose tokens
   come within one bucket's tokens of the target and never beyond `max_epochs`.
3. **Shuffle and write.** Each copy of a taken document gets a seeded 64-bit key; equal ranges of the key
   are the shards (about `shard_tokens` each). A Ray Data shuffle brings each shard's documents to one
   task, which orders them by key and writes `phaseN/shard_NNNNN.bin/.idx` and its slice of
   `documents.parquet`, and returns the shard's tokens per source. The driver writes `manifest.json`.

Hashes and keys depend only on the seed, the phase, the source and each document's id and own source, so
the shards are byte-identical for the same documents and seed, whatever Ray's scheduling or the cluster.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.parts import COMMITS, PartsResult, commit_file, committed
from pipeline.shards import DOCUMENTS, DOCUMENTS_SCHEMA, blend_fields, write_indexed_dataset, write_manifest
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.mix.config import MixConfig
from pipeline.stages.mix.recipes import (
    SELECT_BITS,
    Cut,
    buckets,
    cut,
    doc_hash,
    parse_where,
    source_targets,
    where_mask,
)
from pipeline.tokenizer import (
    encode_plain,
    encoder_from_json,
    load_tokenizer,
    plain_text_encoder,
    token_dtype,
)

logger = logging.getLogger(__name__)

TASK_BYTES = 4 << 20  # the most text per tokenization task: about a second of one core
TOKENIZED = "_tokenized"  # in the work directory: one Parquet part per tokenization task, removed at the end


@dataclass(frozen=True)
class Pick:
    """One source of one phase: `k` numbers it (its `where` column in the tokenized parts is `where{k}`)."""

    k: int
    phase: str
    phase_index: int
    name: str
    stage: str
    where: tuple[str, ...]
    max_epochs: float

    def select_key(self, seed: int) -> str:
        return f"{seed}/{self.phase}/{self.name}/select"

    def shuffle_key(self, seed: int) -> str:
        return f"{seed}/{self.phase}/{self.name}/shuffle"


def _picks(cfg: MixConfig) -> list[Pick]:
    picks = []
    for p, (phase, recipe) in enumerate(cfg.recipes().items()):
        for s in recipe.sources:
            picks.append(Pick(len(picks), phase, p, s.name, s.stage, tuple(s.where), s.max_epochs))
    return picks


def _columns_needed(cfg: MixConfig, stage: str) -> list[str]:
    cols = {"id", "source"}
    for r in cfg.recipes().values():
        cols |= {parse_where(w)[0] for s in r.sources if s.stage == stage for w in s.where}
    return sorted(cols)


def _tokenize(texts: list[str | None], encoder, eos: int, dtype: str) -> tuple[pa.Array, pa.Array]:
    """Token ids (with EOS) of each document as bytes of `dtype`, and their counts (0: no text)."""
    ids = encode_plain(encoder, eos, ["" if t is None else t for t in texts])
    n_tokens = pa.array([0 if t is None else len(x) for t, x in zip(texts, ids)], pa.int64())
    tokens = pa.array(
        [b"" if t is None else np.asarray(x, dtype=dtype).tobytes() for t, x in zip(texts, ids)],
        pa.large_binary(),
    )
    return n_tokens, tokens


def _part_path(tokenized: str, name: str) -> str:
    return storage.join(tokenized, f"{name}.parquet")


class _ReadAndTokenize:
    """Ray map_batches actor: reads each task's rows straight from Parquet, tokenizes them and writes them
    as one Parquet part to the output storage; only the task's row count comes back.

    Reading inside the tokenizing task (rather than `read_parquet` then `map_batches`) keeps the text out
    of the object store and drops two operators. Actors rather than tasks: Ray Data queues the next task
    at an actor while it runs one, where a stateless task waited ~0.15 s for its core to be handed on
    (38 s against 22 s for 118 MB on 2 cores).
    """

    def __init__(self, spec: str, eos: int, dtype: str, batch_size: int, tokenized: str, columns, picks):
        # One thread per actor: Ray runs one per core, so the tokenizer's own thread pool would oversubscribe.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.encoder = encoder_from_json(spec)
        self.eos, self.dtype, self.batch_size = eos, dtype, batch_size
        self.tokenized, self.columns, self.picks = tokenized, columns, picks

    def __call__(self, tasks: pa.Table) -> pa.Table:
        done, rows = [], []
        for t in tasks.to_pylist():
            stage = t["stage"]
            with _parquet(t["path"]) as pf:
                table = pf.read_row_groups(
                    range(t["first"], t["last"]),
                    columns=sorted({"text", *self.columns[stage]}),
                    use_threads=False,
                )
            table = table.slice(t["start"], t["stop"] - t["start"])
            texts = table["text"].to_pylist()
            n_tokens, tokens = [], []
            for i in range(0, len(texts), self.batch_size):
                n, tk = _tokenize(texts[i : i + self.batch_size], self.encoder, self.eos, self.dtype)
                n_tokens.append(n)
                tokens.append(tk)
            part = pa.table(
                {
                    "id": pc.cast(table["id"], pa.string()),
                    "doc_source": pc.cast(table["source"], pa.string()),
                    "n_tokens": pa.chunked_array(n_tokens, pa.int64()),
                    "tokens": pa.chunked_array(tokens, pa.large_binary()),
                }
            )
            for k, rules, where in self.picks[stage]:
                part = part.append_column(f"where{k}", pa.array(where_mask(table, list(rules), where)))
            fs, path = storage.resolve(_part_path(self.tokenized, t["name"]))
            pq.write_table(part, path, filesystem=fs)
            storage.write_json(
                commit_file(self.tokenized, t["name"]), {"name": t["name"], "rows": part.num_rows}
            )
            done.append(t["name"])
            rows.append(part.num_rows)
        return pa.table({"name": pa.array(done, pa.string()), "rows": pa.array(rows, pa.int64())})


def _read_tasks(files: dict[str, list[str]], cores: int) -> list[dict]:
    """Runs of rows (from the Parquet footers) of about equal text, largest first: the units of tokenization.

    A task holds 1/8 of a core's share of the text, at most TASK_BYTES, so the cores finish together.
    Small row groups (a stage writes one per Ray block) are merged; a large one is split into row ranges,
    each task reading the group again (cheap next to tokenizing it). Largest first, so that no long task
    starts last while the other cores have nothing left to do. `row` is the task's first row among all
    rows of its stage, in file order; `name` is a function of the rows it reads (file, row groups, range).
    """
    groups = []  # (stage, path, row group, its first row in the stage, rows, bytes of text)
    for stage, paths in files.items():
        row = 0
        for path in paths:
            with _parquet(path) as pf:
                meta = pf.metadata
            text = [meta.schema.column(i).path for i in range(meta.num_columns)].index("text")
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                groups.append(
                    (stage, path, g, row, rows, meta.row_group(g).column(text).total_uncompressed_size)
                )
                row += rows
    target = max(1, min(TASK_BYTES, sum(g[-1] for g in groups) // (8 * cores)))
    tasks, run = [], None
    for stage, path, g, row, rows, size in groups:
        if size > target:
            pieces = -(-size // target)
            bounds = [rows * i // pieces for i in range(pieces + 1)]
            tasks += [
                {
                    "stage": stage,
                    "path": path,
                    "first": g,
                    "last": g + 1,
                    "start": lo,
                    "stop": hi,
                    "row": row + lo,
                    "bytes": size // pieces,
                }
                for lo, hi in zip(bounds, bounds[1:])
                if hi > lo
            ]
            run = None  # a run holds consecutive groups: the next small group starts a new one
            continue
        if run is None or run["path"] != path:
            run = {
                "stage": stage,
                "path": path,
                "first": g,
                "last": g,
                "start": 0,
                "stop": 0,
                "row": row,
                "bytes": 0,
            }
            tasks.append(run)
        run["last"], run["stop"], run["bytes"] = g + 1, run["stop"] + rows, run["bytes"] + size
        if run["bytes"] >= target:
            run = None
    tasks.sort(key=lambda t: -t["bytes"])
    for i, t in enumerate(tasks):
        t["task"] = i
        where = f"{t['path']}:{t['first']}:{t['last']}:{t['start']}:{t['stop']}"
        t["name"] = f"{t['stage']}-{hashlib.sha1(where.encode()).hexdigest()[:16]}"
    return tasks


def _parquet(path: str) -> pq.ParquetFile:
    """A Parquet file, on local disk or an object store."""
    fs, local = storage.resolve(path)
    return pq.ParquetFile(local, filesystem=fs)


def _read_part(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, local = storage.resolve(path)
    return pq.read_table(local, columns=columns, filesystem=fs)


def tokenize_sources(
    ctx: StageContext, tok, tokenized: str, picks: list[Pick]
) -> tuple[list[tuple[str, str]], int]:
    """Tokenize the kept documents of every stage the recipes read, in one Ray Data pass (one actor pool),
    into Parquet parts under `tokenized`; tasks an earlier attempt committed are reused. Returns the parts
    as (stage, path) and how many were reused."""
    import ray

    from pipeline.runner import stage_dir  # the runner imports the stages

    cfg: MixConfig = ctx.section
    files, keep = {}, {}
    for stage in cfg.stages_read():
        directory = stage_dir(ctx.output, stage)
        files[stage] = storage.list_files(directory, suffix=".parquet")
        if not files[stage]:
            raise UserError(f"{directory}: no Parquet parts; rerun stage '{stage}' with --force")
        with _parquet(files[stage][0]) as pf:
            schema = pf.schema_arrow
        keep[stage] = _columns_needed(cfg, stage)
        absent = [c for c in keep[stage] + ["text"] if c not in schema.names]
        if absent:
            raise UserError(
                f"mix: the output of stage '{stage}' has no column(s) {absent} that the recipes use "
                f"(columns: {', '.join(schema.names)})"
            )
        for p in picks:  # a rule that cannot compare with its column fails here, not in a task
            if p.stage == stage:
                where_mask(schema.empty_table(), list(p.where), _where_key(p))
    by_stage = {s: [(p.k, p.where, _where_key(p)) for p in picks if p.stage == s] for s in files}
    dtype = np.dtype(token_dtype(len(tok))).name
    cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
    plan = _read_tasks(files, cores)
    planned = {t["name"]: t["stop"] - t["start"] for t in plan}
    reused = {n: r["rows"] for n, r in committed(tokenized).items() if n in planned}
    for name, rows in reused.items():
        if planned.pop(name) != rows:
            raise RuntimeError(f"mix: tokenization task {name} committed {rows} rows, its plan has others")
    tasks = [t for t in plan if t["name"] in planned]
    if reused:
        logger.info(
            "[mix] %d of %d tokenization tasks committed by an earlier run: reused", len(reused), len(plan)
        )
    storage.make_dir(storage.join(tokenized, COMMITS))
    tokenized_ds = ray.data.from_items(
        tasks, override_num_blocks=max(1, min(len(tasks), 16 * cores))
    ).map_batches(
        _ReadAndTokenize,
        batch_format="pyarrow",
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(cores, len(tasks)))),
        # the tokenizer travels as its JSON: workers need neither transformers nor the Hub
        fn_constructor_kwargs={
            "spec": plain_text_encoder(tok).to_str(),
            "eos": tok.eos_token_id,
            "dtype": dtype,
            "batch_size": cfg.batch_size,
            "tokenized": tokenized,
            "columns": keep,
            "picks": by_stage,
        },
    )
    tokenized_ds.context.execution_options.preserve_order = False  # parts are named by task: any order
    for batch in tokenized_ds.iter_batches(batch_format="pyarrow", batch_size=None) if tasks else []:
        for name, rows in zip(batch["name"].to_pylist(), batch["rows"].to_pylist()):
            if planned.pop(name, None) != rows:
                raise RuntimeError(f"mix: tokenization task {name} returned {rows} rows or ran twice")
    if planned:
        raise RuntimeError(f"mix: tokenization tasks {sorted(planned)[:10]} returned nothing")
    return [(t["stage"], _part_path(tokenized, t["name"])) for t in plan], len(reused)


def _where_key(p: Pick) -> str:
    return f"mix.{p.phase}.sources[{p.name}].where"


@dataclass
class Tally:
    """Per pick: eligible documents and their tokens per hash bucket; rows read, rows without text, rows
    that failed the `where` rules. Fixed size, whatever the number of documents."""

    docs: np.ndarray
    tokens: np.ndarray
    rows: int = 0
    no_text: int = 0
    mix_where: int = 0

    def add(self, other: "Tally") -> None:
        self.docs += other.docs
        self.tokens += other.tokens
        self.rows, self.no_text = self.rows + other.rows, self.no_text + other.no_text
        self.mix_where += other.mix_where


def _eligible(part: pa.Table, k: int) -> np.ndarray:
    return part[f"where{k}"].to_numpy(zero_copy_only=False) & (part["n_tokens"].to_numpy() > 0)


def _tally(parts: list[tuple[str, str]], picks: list[Pick], seed: int, bits: int) -> dict[int, Tally]:
    """The tallies of some tokenized parts (a Ray task: reads only the small columns)."""
    out = {p.k: Tally(np.zeros(1 << bits, np.int64), np.zeros(1 << bits, np.int64)) for p in picks}
    for stage, path in parts:
        mine = [p for p in picks if p.stage == stage]
        part = _read_part(path, ["id", "doc_source", "n_tokens", *(f"where{p.k}" for p in mine)])
        n_tok = part["n_tokens"].to_numpy()
        for p in mine:
            t, ok = out[p.k], _eligible(part, p.k)
            where = part[f"where{p.k}"].to_numpy(zero_copy_only=False)
            t.rows += part.num_rows
            t.no_text += int((n_tok == 0).sum())
            t.mix_where += int((~where & (n_tok > 0)).sum())
            sub = part.filter(pa.array(ok))
            b = buckets(
                doc_hash(p.select_key(seed), sub["id"].to_pylist(), sub["doc_source"].to_pylist()), bits
            )
            t.docs += np.bincount(b, minlength=1 << bits)
            t.tokens += np.bincount(b, weights=n_tok[ok], minlength=1 << bits).astype(np.int64)
    return out


def _gather(fn, parts: list[tuple[str, str]], add, *args) -> None:
    """Run `fn(group of parts, *args)` as a few Ray tasks (4 per CPU) and `add` each result on the driver as
    it finishes: it holds one reference per task in flight and the running sums, never the parts' rows."""
    import ray

    cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n = max(1, min(len(parts), 4 * cores))
    remote = ray.remote(fn)
    pending = [remote.remote(parts[i::n], *args) for i in range(n)]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        add(ray.get(done[0]))


def tally_sources(parts: list[tuple[str, str]], picks: list[Pick], seed: int, bits: int) -> dict[int, Tally]:
    """Every pick's tally (hash buckets of its eligible documents), summed over the parts."""
    total = {p.k: Tally(np.zeros(1 << bits, np.int64), np.zeros(1 << bits, np.int64)) for p in picks}

    def add(result: dict[int, Tally]) -> None:
        for k, t in result.items():
            total[k].add(t)

    _gather(_tally, parts, add, picks, seed, bits)
    return total


def key_tallies(
    parts, picks: list[Pick], cuts: dict[int, Cut], seed: int, bits: int
) -> dict[int, np.ndarray]:
    """Per phase index: the taken tokens per shuffle-key bucket, summed over the parts."""
    total = {p.phase_index: np.zeros(1 << bits, np.int64) for p in picks}

    def add(result: dict[int, np.ndarray]) -> None:
        for k, hist in result.items():
            total[k] += hist

    _gather(_key_tally, parts, add, picks, cuts, seed, bits)
    return total


def _copies(part: pa.Table, p: Pick, c: Cut, seed: int, bits: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The copies pick `p` takes of a tokenized part's documents: their rows, copy numbers and keys."""
    sub = part.filter(pa.array(_eligible(part, p.k)))
    ids, srcs = sub["id"].to_pylist(), sub["doc_source"].to_pylist()
    copies = c.copies(buckets(doc_hash(p.select_key(seed), ids, srcs), bits))
    rows = np.repeat(np.arange(sub.num_rows), copies)
    copy = np.arange(len(rows)) - np.repeat(np.cumsum(copies) - copies, copies)
    key = doc_hash(p.shuffle_key(seed), [f"{ids[r]}\x00{srcs[r]}" for r in rows], copy.tolist())
    return sub.take(pa.array(rows, pa.int64())), copy, key


def _key_tally(parts, picks: list[Pick], cuts: dict[int, Cut], seed: int, bits: int) -> dict[int, np.ndarray]:
    """Per phase: the tokens of the taken copies per bucket of the shuffle key (a Ray task)."""
    out: dict[int, np.ndarray] = {}
    for stage, path in parts:
        mine = [p for p in picks if p.stage == stage and cuts[p.k].tokens]
        part = _read_part(path, ["id", "doc_source", "n_tokens", *(f"where{p.k}" for p in mine)])
        for p in mine:
            taken, _, key = _copies(part, p, cuts[p.k], seed, bits)
            hist = out.setdefault(p.phase_index, np.zeros(1 << bits, np.int64))
            hist += np.bincount(
                buckets(key, bits), weights=taken["n_tokens"].to_numpy(), minlength=1 << bits
            ).astype(np.int64)
    return out


def shard_bounds(key_tokens: np.ndarray, shard_tokens: int) -> np.ndarray:
    """First key bucket of every shard after the first: a shard closes at the first bucket edge where it
    holds `shard_tokens` (so each but the last holds at least that, and less than that plus one bucket)."""
    cum = np.cumsum(key_tokens, dtype=np.int64)
    bounds, base = [], 0
    while True:
        end = int(np.searchsorted(cum, base + shard_tokens, side="left"))  # cum[end] >= base + shard_tokens
        if end >= len(cum) - 1 or cum[end] == cum[-1]:
            return np.array(bounds, np.int64)
        bounds.append(end + 1)
        base = int(cum[end])


def _emit(
    batch: pa.Table, picks: list[Pick], cuts: dict[int, Cut], bounds: list[np.ndarray], seed: int, bits: int
) -> pa.Table:
    """Ray Data map task over tokenized parts: every copy a phase takes of each document, with its shuffle
    key and its group (phase index << 32 | shard: the shard is the key's range)."""
    out = []
    for stage, path in zip(batch["stage"].to_pylist(), batch["path"].to_pylist()):
        mine = [p for p in picks if p.stage == stage and cuts[p.k].tokens]
        part = _read_part(path, ["id", "doc_source", "n_tokens", "tokens", *(f"where{p.k}" for p in mine)])
        for p in mine:
            taken, copy, key = _copies(part, p, cuts[p.k], seed, bits)
            shard = np.searchsorted(bounds[p.phase_index], buckets(key, bits), side="right")
            group = (np.int64(p.phase_index) << np.int64(32)) | shard.astype(np.int64)
            out.append(
                taken.select(["id", "doc_source", "n_tokens", "tokens"])
                .append_column("group", pa.array(group))
                .append_column("key", pa.array(key))
                .append_column("source", pa.array([p.name] * taken.num_rows, pa.string()))
                .append_column("copy", pa.array(copy, pa.int64()))
            )
    return pa.concat_tables(out) if out else _EMITTED.empty_table()


_EMITTED = pa.schema(
    [
        ("id", pa.string()),
        ("doc_source", pa.string()),
        ("n_tokens", pa.int64()),
        ("tokens", pa.large_binary()),
        ("group", pa.int64()),
        ("key", pa.uint64()),
        ("source", pa.string()),
        ("copy", pa.int64()),
    ]
)
SHARD_ORDER = [(c, "ascending") for c in ("key", "source", "id", "doc_source", "copy")]


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def _write_shard(group: pa.Table, phase_dirs: list[str], dtype: str) -> pa.Table:
    """Ray Data map_groups: one shard's documents, ordered by their keys, as `.bin/.idx` and its slice of
    documents.parquet; returns the shard's documents and tokens per source."""
    g = group["group"][0].as_py()
    phase, shard = g >> 32, g & 0xFFFFFFFF
    t = group.sort_by(SHARD_ORDER)
    tokens = t["tokens"].combine_chunks()
    offsets = np.frombuffer(tokens.buffers()[1], np.int64)[tokens.offset : tokens.offset + len(tokens) + 1]
    data = tokens.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    prefix = storage.join(phase_dirs[phase], shard_name(shard))
    write_indexed_dataset(prefix, t["n_tokens"].to_numpy(), data, dtype=np.dtype(dtype).type)
    _write_documents(phase_dirs[phase], shard, t)
    summary = t.group_by("source").aggregate([("n_tokens", "sum"), ("n_tokens", "count")])
    return pa.table(
        {
            "group": pa.array([g] * summary.num_rows, pa.int64()),
            "source": summary["source"],
            "tokens": summary["n_tokens_sum"],
            "docs": summary["n_tokens_count"],
        }
    )


def _write_documents(phase_dir: str, shard: int, t: pa.Table) -> None:
    rows = pa.table(
        {
            "shard": pa.array(np.full(t.num_rows, shard, np.int32)),
            "index": pa.array(np.arange(t.num_rows, dtype=np.int64)),
            "source": t["source"],
            "id": t["id"],
            "doc_source": t["doc_source"],
            "tokens": t["n_tokens"],
        },
        schema=DOCUMENTS_SCHEMA,
    )
    fs, path = storage.resolve(storage.join(phase_dir, DOCUMENTS, f"{shard_name(shard)}.parquet"))
    pq.write_table(rows, path, filesystem=fs)


def write_shards(
    parts: list[tuple[str, str]],
    picks: list[Pick],
    cuts: dict[int, Cut],
    bounds: list[np.ndarray],
    phase_dirs: list[str],
    seed: int,
    dtype: str,
) -> pa.Table:
    """The distributed shuffle: Ray Data map tasks emit each taken copy with its key and shard, a hash
    shuffle brings each shard to one task that writes it. Returns one row per shard and source."""
    import ray

    cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"stage": s, "path": p} for s, p in parts]
    written = (
        ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 16 * cores)))
        .map_batches(
            _emit,
            batch_format="pyarrow",
            batch_size=1,
            fn_kwargs={"picks": picks, "cuts": cuts, "bounds": bounds, "seed": seed, "bits": SELECT_BITS},
        )
        .groupby("group", num_partitions=max(1, min(sum(len(b) + 1 for b in bounds), 64 * cores)))
        .map_groups(
            _write_shard, batch_format="pyarrow", fn_kwargs={"phase_dirs": phase_dirs, "dtype": dtype}
        )
    )
    rows = written.take_all()
    return (
        pa.Table.from_pylist(rows)
        if rows
        else pa.table({"group": [], "source": [], "tokens": [], "docs": []})
    )


def run(ctx: StageContext) -> StageOutput:
    cfg: MixConfig = ctx.section
    tok = load_tokenizer(cfg.tokenizer)
    # a local tokenizer directory is named absolutely, so the manifest resolves from any working directory
    tokenizer_name = os.path.abspath(cfg.tokenizer) if os.path.isdir(cfg.tokenizer) else cfg.tokenizer
    final = storage.join(ctx.output, ctx.stage)  # where the work directory goes on success (runner.stage_dir)
    tokenized = storage.join(ctx.work_dir, TOKENIZED)
    picks = _picks(cfg)
    t0 = time.perf_counter()
    parts, reused = tokenize_sources(ctx, tok, tokenized, picks)
    details: dict = {"tokenize_s": round(time.perf_counter() - t0, 2)}

    t0 = time.perf_counter()
    tallies = tally_sources(parts, picks, cfg.seed, SELECT_BITS)
    docs_in = docs_out = 0
    dropped: dict[str, int] = {}
    cuts: dict[int, Cut] = {}
    phases = list(cfg.recipes())
    for phase, recipe in cfg.recipes().items():
        mine = [p for p in picks if p.phase == phase]
        available = {p.name: int(tallies[p.k].tokens.sum()) for p in mine}
        targets = source_targets(phase, recipe, available)
        for p in mine:
            t = tallies[p.k]
            cuts[p.k] = c = cut(t.tokens, targets[p.name], p.max_epochs)
            kept = int(t.docs.sum()) if c.passes else int(t.docs[: c.below].sum())
            docs_in += t.rows
            docs_out += kept
            for reason, n in (
                ("mix_where", t.mix_where),
                ("no_text", t.no_text),
                ("mix_not_sampled", int(t.docs.sum()) - kept),
            ):
                if n:
                    dropped[reason] = dropped.get(reason, 0) + n
        if not sum(cuts[p.k].tokens for p in mine):
            raise UserError(f"mix.{phase}: the recipe selects no tokens; raise the phase's tokens")
        details[phase] = {"targets": targets, "available": available}
    keys = key_tallies(parts, picks, cuts, cfg.seed, SELECT_BITS)
    bounds = [shard_bounds(keys[i], cfg.shard_tokens) for i in range(len(phases))]
    shards = [len(b) + 1 for b in bounds]
    details["select_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    phase_dirs = [storage.join(ctx.work_dir, phase) for phase in phases]
    for d in phase_dirs:
        storage.make_dir(storage.join(d, DOCUMENTS))
    dtype = np.dtype(token_dtype(len(tok))).name
    written = write_shards(parts, picks, cuts, bounds, phase_dirs, cfg.seed, dtype)
    tokens_out = 0
    for i, phase in enumerate(phases):
        mine = [p for p in picks if p.phase == phase]
        totals = _manifest(i, phase, mine, cuts, written, shards[i], phase_dirs[i], details[phase], dtype)
        shard_tokens = totals.pop("shard_tokens")
        manifest = {
            "phase": phase,
            "tokenizer": tokenizer_name,
            "vocab_size": len(tok),
            **totals,
            **blend_fields(storage.join(final, phase), totals["shards"], shard_tokens),
        }
        write_manifest(phase_dirs[i], manifest)
        tokens_out += manifest["tokens"]
        details[phase] = {
            "tokens": manifest["tokens"],
            "shards": len(manifest["shards"]),
            **details[phase],
            "sources": manifest["sources"],
            "cuts": {
                p.name: {
                    "passes": cuts[p.k].passes,
                    "buckets_below": cuts[p.k].below,
                    "tokens": cuts[p.k].tokens,
                    "tolerance": cuts[p.k].tolerance,
                }
                for p in mine
            },
        }
    details["write_s"] = round(time.perf_counter() - t0, 2)
    storage.remove_dir(tokenized)
    return StageOutput(
        # the parts are the tokenization tasks; docs_in counts each document once per phase source reading it
        parts=PartsResult(len(parts), reused, docs_in, docs_out, dict(sorted(dropped.items()))),
        docs_in=docs_in,
        tokens_out=tokens_out,
        details=details,
    )


def _manifest(
    index: int,
    phase: str,
    picks: list[Pick],
    cuts: dict[int, Cut],
    written: pa.Table,
    n_shards: int,
    phase_dir: str,
    details: dict,
    dtype: str,
) -> dict:
    """A phase's totals from the shard tasks' rows (every shard holds tokens: `shard_bounds`)."""
    group = written["group"].to_numpy() if written.num_rows else np.zeros(0, np.int64)
    rows = written.filter(pa.array((group >> 32) == index)) if written.num_rows else written
    shard_tokens = np.zeros(n_shards, np.int64)
    np.add.at(shard_tokens, rows["group"].to_numpy() & 0xFFFFFFFF, rows["tokens"].to_numpy())
    total = int(shard_tokens.sum())
    expected = sum(cuts[p.k].tokens for p in picks)
    if total != expected:
        raise RuntimeError(f"mix.{phase}: the shards hold {total} tokens, the selection {expected}")
    sources = {}
    for p in picks:
        mine = rows.filter(pc.equal(rows["source"], p.name))
        tokens, docs = int(pc.sum(mine["tokens"]).as_py() or 0), int(pc.sum(mine["docs"]).as_py() or 0)
        have = details["available"][p.name]
        sources[p.name] = {
            "tokens": tokens,
            "docs": docs,
            "weight": round(tokens / total, 6) if total else 0.0,
            "epochs": round(tokens / have, 4) if have else 0.0,
        }
    names = [shard_name(s) for s in range(n_shards)]
    return {"tokens": total, "sources": sources, "shards": names, "shard_tokens": shard_tokens.tolist()}


# resumes: a rerun after a kill keeps the tokenization tasks committed in the work directory
STAGE = Stage("mix", run, outside_files=lambda config: [config.mix.tokenizer], resumes=True)
