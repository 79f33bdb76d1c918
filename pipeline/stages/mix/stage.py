"""Stage `mix`: phase-1 and phase-2 token mixes as shuffled Megatron shards with a manifest per phase.

1. Each stage output a recipe names is tokenized once, all of them in one Ray `map_batches` over runs of
   their Parquet row groups (each task reads its own text; the fast tokenizer's batch encode, EOS after
   each document); the tokens stream to a Megatron file per stage in the work directory.
2. Per phase, each source's documents (its `where` rules applied) and their token counts give each source's
   target (pipeline/recipes.py); whole epochs plus a seeded random subset reach it.
3. All picks of a phase are shuffled with the seed and written into shards of about `shard_tokens` tokens
   (`phaseN/shard_00000.bin/.idx`), with `manifest.json` (DESIGN.md "Contracts") and `documents.parquet`
   (which document of which source sits where: the trainer's per-source view, and the audit trail).

Documents are ordered by id before sampling, so the shards depend only on the documents and the seed,
not on how Ray scheduled the tokenization.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.shards import (
    DOCUMENTS,
    DOCUMENTS_SCHEMA,
    IndexedDataset,
    IndexedDatasetWriter,
    blend_fields,
    write_manifest,
)
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.mix.config import MixConfig
from pipeline.stages.mix.recipes import parse_where, sample_documents, source_targets, where_mask
from pipeline.tokenizer import (
    encode_plain,
    encoder_from_json,
    load_tokenizer,
    plain_text_encoder,
    token_dtype,
)

TOKENIZED = pa.schema(
    [("task", pa.int64()), ("offset", pa.int64()), ("n_tokens", pa.int64()), ("tokens", pa.large_binary())]
)
TASK_BYTES = 4 << 20  # the most text per tokenization task: about a second of one core


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


class _ReadAndTokenize:
    """Ray map_batches actor: reads each task's rows straight from Parquet and tokenizes them.

    Reading inside the tokenizing task (rather than `read_parquet` then `map_batches`) keeps the text out
    of the object store and drops two operators; only the tokens and each row's task and offset come back.
    Actors rather than tasks: Ray Data queues the next task at an actor while it runs one, where a
    stateless task waited ~0.15 s for its core to be handed on (38 s against 22 s for 118 MB on 2 cores).
    """

    def __init__(self, spec: str, eos: int, dtype: str, batch_size: int):
        # One thread per actor: Ray runs one per core, so the tokenizer's own thread pool would oversubscribe.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.encoder = encoder_from_json(spec)
        self.eos, self.dtype, self.batch_size = eos, dtype, batch_size

    def __call__(self, tasks: pa.Table) -> pa.Table:
        out = []
        for t in tasks.to_pylist():
            with _parquet(t["path"]) as pf:
                table = pf.read_row_groups(range(t["first"], t["last"]), columns=["text"], use_threads=False)
            texts = table["text"].slice(t["start"], t["stop"] - t["start"]).to_pylist()
            for i in range(0, len(texts), self.batch_size):
                n_tokens, tokens = _tokenize(
                    texts[i : i + self.batch_size], self.encoder, self.eos, self.dtype
                )
                out.append(
                    pa.table(
                        {
                            "task": pa.array(np.full(len(tokens), t["task"], np.int64)),
                            "offset": pa.array(np.arange(i, i + len(tokens), dtype=np.int64)),
                            "n_tokens": n_tokens,
                            "tokens": tokens,
                        }
                    )
                )
        return pa.concat_tables(out) if out else TOKENIZED.empty_table()


def _read_tasks(files: dict[str, list[str]], cores: int) -> list[dict]:
    """Runs of rows (from the Parquet footers) of about equal text, largest first: the units of tokenization.

    A task holds 1/8 of a core's share of the text, at most TASK_BYTES, so the cores finish together.
    Small row groups (a stage writes one per Ray block) are merged; a large one is split into row ranges,
    each task reading the group again (cheap next to tokenizing it). Largest first, so that no long task
    starts last while the other cores have nothing left to do. `row` is the task's first row among all
    rows of its stage, in file order.
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
    return tasks


def tokenize_sources(ctx: StageContext, tok, work: str) -> dict[str, tuple[pa.Table, IndexedDataset]]:
    """Tokenize the kept documents of every stage the recipes read, in one Ray Data pass (one actor pool),
    into a Megatron file per stage under `work`. Per stage: one row per document (id, source, the columns
    the recipes filter on, n_tokens, row = its position in the stage's file), ordered by id; and the file."""
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
            names = pf.schema_arrow.names
        keep[stage] = _columns_needed(cfg, stage)
        absent = [c for c in keep[stage] + ["text"] if c not in names]
        if absent:
            raise UserError(
                f"mix: the output of stage '{stage}' has no column(s) {absent} that the recipes use "
                f"(columns: {', '.join(names)})"
            )
    dtype = np.dtype(token_dtype(len(tok))).name
    cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
    tasks = _read_tasks(files, cores)
    tokenized = ray.data.from_items(
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
        },
    )
    # Documents are put in id order below, so tasks may finish in any order (a slow one holds nothing up).
    tokenized.context.execution_options.preserve_order = False
    stages = list(files)
    first_row = np.array([t["row"] for t in tasks], np.int64)
    stage_of = np.array([stages.index(t["stage"]) for t in tasks], np.int64)
    writers = [
        IndexedDatasetWriter(os.path.join(work, stage), dtype=np.dtype(dtype).type) for stage in stages
    ]
    placed = {
        stage: [] for stage in stages
    }  # per batch: the documents' rows in the stage, in its file, their tokens
    for batch in tokenized.iter_batches(batch_format="pyarrow", batch_size=None) if tasks else []:
        task = batch["task"].to_numpy()
        at, stage = first_row[task] + batch["offset"].to_numpy(), stage_of[task]
        in_file = np.empty(len(task), np.int64)
        for i, (k, blob) in enumerate(zip(stage.tolist(), batch["tokens"].to_pylist())):
            in_file[i] = writers[k].docs
            writers[k].add_document(np.frombuffer(blob, dtype=dtype))
        for k in np.unique(stage).tolist():
            mine = stage == k
            placed[stages[k]].append((at[mine], in_file[mine], batch["n_tokens"].to_numpy()[mine]))
    out = {}
    for writer, (stage, paths) in zip(writers, files.items()):
        writer.close()
        meta = pa.concat_tables([_read_columns(p, keep[stage]) for p in paths], promote_options="default")
        at, in_file, n_tokens = (
            np.concatenate([p[k] for p in placed[stage]]) if placed[stage] else np.zeros(0, np.int64)
            for k in range(3)
        )
        order = np.argsort(at, kind="stable")
        if len(at) != meta.num_rows or not np.array_equal(at[order], np.arange(meta.num_rows)):
            raise RuntimeError(
                f"mix: tokenized {len(at)} documents of stage '{stage}', which has {meta.num_rows}"
            )
        meta = meta.append_column("n_tokens", pa.array(n_tokens[order])).append_column(
            "row", pa.array(in_file[order])
        )
        out[stage] = (
            meta.sort_by([("id", "ascending"), ("source", "ascending")]),
            IndexedDataset(os.path.join(work, stage)),
        )
    return out


def _read_columns(path: str, columns: list[str]) -> pa.Table:
    with _parquet(path) as pf:
        return pf.read(columns=columns)


def _parquet(path: str) -> pq.ParquetFile:
    """A stage's Parquet part, on local disk or an object store."""
    fs, local = storage.resolve(path)
    return pq.ParquetFile(local, filesystem=fs)


def write_phase(
    phase: str,
    picks: list[tuple[str, np.ndarray, pa.Table, IndexedDataset]],
    cfg: MixConfig,
    out_dir: str,
    tokenizer_name: str,
    vocab_size: int,
    available: dict[str, int],
    location: str | None = None,
) -> dict:
    """Shuffle the picks of a phase with the seed, write its shards, documents.parquet and manifest.json.

    `location`: where the phase directory ends up (the stage directory's, not the work directory's, and the
    object store's URI when the shards are uploaded there): the manifest's blend names the shards there.
    """
    os.makedirs(out_dir, exist_ok=True)
    src = (
        np.concatenate([np.full(len(idx), i, np.int32) for i, (_, idx, _, _) in enumerate(picks)])
        if picks
        else np.zeros(0, np.int32)
    )
    doc = np.concatenate([idx for _, idx, _, _ in picks]) if picks else np.zeros(0, np.int64)
    key = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{phase}/shuffle".encode()).digest()[:8], "little")
    order = np.random.default_rng(key).permutation(len(doc))
    dtype = np.dtype(token_dtype(vocab_size)).type
    shards, shard_tokens, rows = (
        [],
        [],
        {k: [] for k in ("shard", "index", "source", "id", "doc_source", "tokens")},
    )
    columns = [(m["row"].to_numpy(), m["id"].to_pylist(), m["source"].to_pylist()) for _, _, m, _ in picks]
    writer = None
    for j in order:
        name, _, _, data = picks[src[j]]
        rows_of, ids, doc_sources = columns[src[j]]
        if writer is None or writer.tokens >= cfg.shard_tokens:
            if writer is not None:
                writer.close()
                shard_tokens.append(writer.tokens)
            shards.append(f"shard_{len(shards):05d}")
            writer = IndexedDatasetWriter(os.path.join(out_dir, shards[-1]), dtype=dtype)
        d = int(doc[j])
        tokens = data.doc(int(rows_of[d]))
        rows["shard"].append(len(shards) - 1)
        rows["index"].append(writer.docs)
        rows["source"].append(name)
        rows["id"].append(ids[d])
        rows["doc_source"].append(doc_sources[d])
        rows["tokens"].append(len(tokens))
        writer.add_document(tokens)
    if writer is not None:
        writer.close()
        shard_tokens.append(writer.tokens)
    pq.write_table(pa.table(rows, schema=DOCUMENTS_SCHEMA), os.path.join(out_dir, DOCUMENTS))
    total = int(sum(shard_tokens))
    sources = {}
    for name, idx, meta, _ in picks:
        tokens = int(meta["n_tokens"].to_numpy()[idx].sum()) if len(idx) else 0
        sources[name] = {
            "tokens": tokens,
            "docs": int(len(idx)),
            "weight": round(tokens / total, 6) if total else 0.0,
            "epochs": round(tokens / available[name], 4) if available[name] else 0.0,
        }
    manifest = {
        "phase": phase,
        "tokenizer": tokenizer_name,
        "vocab_size": vocab_size,
        "tokens": total,
        "sources": sources,
        "shards": shards,
        **blend_fields(location or out_dir, shards, shard_tokens),
    }
    write_manifest(out_dir, manifest)
    return manifest


def run(ctx: StageContext) -> StageOutput:
    cfg: MixConfig = ctx.section
    # Shards are written (and the tokenized sources memory-mapped) on a local disk; with an object-store
    # output they are uploaded into the stage's work directory at the end.
    local = ctx.work_dir if "://" not in ctx.work_dir else tempfile.mkdtemp(prefix="phicurate-mix-")
    tok = load_tokenizer(cfg.tokenizer)
    # a local tokenizer directory is named absolutely, so the manifest resolves from any working directory
    tokenizer_name = os.path.abspath(cfg.tokenizer) if os.path.isdir(cfg.tokenizer) else cfg.tokenizer
    final = storage.join(ctx.output, ctx.stage)  # where the work directory goes on success (runner.stage_dir)
    tmp = os.path.join(local, "_tokenized")
    os.makedirs(tmp, exist_ok=True)
    t0 = time.perf_counter()
    tokenized = tokenize_sources(ctx, tok, tmp)

    docs_in = docs_out = 0
    dropped: dict[str, int] = {}
    details: dict = {"tokenize_s": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    manifests = {}
    for phase, recipe in cfg.recipes().items():
        selected, available = {}, {}
        for s in recipe.sources:
            meta, data = tokenized[s.stage]
            n_tok = meta["n_tokens"].to_numpy()
            mask = where_mask(meta, s.where, f"mix.{phase}.sources[{s.name}].where")
            no_text = n_tok == 0
            chosen = mask & ~no_text
            docs_in += meta.num_rows
            for reason, n in (("mix_where", int((~mask & ~no_text).sum())), ("no_text", int(no_text.sum()))):
                if n:
                    dropped[reason] = dropped.get(reason, 0) + n
            sub = meta.filter(pa.array(chosen))
            selected[s.name] = (sub, data)
            available[s.name] = int(sub["n_tokens"].to_numpy().sum())
        targets = source_targets(phase, recipe, available)
        picks = []
        for s in recipe.sources:
            sub, data = selected[s.name]
            idx = sample_documents(
                sub["n_tokens"].to_numpy(), targets[s.name], f"{cfg.seed}/{phase}/{s.name}"
            )
            used = len(np.unique(idx))
            docs_out += used
            if sub.num_rows - used:
                dropped["mix_not_sampled"] = dropped.get("mix_not_sampled", 0) + sub.num_rows - used
            picks.append((s.name, idx, sub, data))
        manifests[phase] = write_phase(
            phase,
            picks,
            cfg,
            os.path.join(local, phase),
            tokenizer_name,
            len(tok),
            available,
            location=storage.join(final, phase),
        )
        details[phase] = {
            "tokens": manifests[phase]["tokens"],
            "shards": len(manifests[phase]["shards"]),
            "targets": targets,
            "available": available,
            "sources": manifests[phase]["sources"],
        }
    details["write_s"] = round(time.perf_counter() - t0, 2)
    shutil.rmtree(tmp)
    if local != ctx.work_dir:
        fs, path = storage.resolve(ctx.work_dir)
        pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        shutil.rmtree(local)
    return StageOutput(
        docs=None,
        docs_in=docs_in,
        docs_out=docs_out,
        dropped=dict(sorted(dropped.items())),
        tokens_out=sum(m["tokens"] for m in manifests.values()),
        details=details,
    )


STAGE = Stage("mix", run, outside_files=lambda config: [config.mix.tokenizer])
