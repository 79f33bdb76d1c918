"""Ids given twice (a JSONL id, a WARC-Record-ID, in one file or several): every copy after the first in
file order is dropped as `duplicate_id`, so later stages can key on the id and the choice does not depend
on scheduling.

Global, so it runs after every part is committed, as a step of its own. Each part's task wrote the ids of
its kept documents to `_ids/<part>.parquet`, one row group per hash bucket. One task per bucket reads its
row group of every part (1/B of all ids), finds the ids seen more than once (usually none) and writes the
later copies to `_dups/<bucket>.parquet`; only a part that holds such a copy is rewritten, from its
committed files, as part `<part>-d` (committed like any part), and its first files are then removed. The
driver sees bucket and part counts only. A rerun after a kill recomputes the buckets from the same `_ids`
files (the same result) and skips each rewrite already committed.

Hand-written over Ray Data's groupby: its shuffle starts 200 aggregators (or a sort over samples) whatever
the size, a fixed cost of tens of seconds on a small machine for what is, without duplicates, one pass
over the ids.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import parts, storage
from pipeline.parts import Part, PartsResult

logger = logging.getLogger(__name__)

IDS = "_ids"
DUPS = "_dups"
REWRITE = "-d"  # a part rewritten with its later copies of repeated ids dropped
IDS_SCHEMA = pa.schema(
    [("id", pa.string()), ("bucket", pa.int32()), ("row", pa.int64()), ("place", pa.string())]
)


def buckets_for(n_parts: int) -> int:
    """Hash buckets of the id pass: one per part, at most 256 (a function of the plan, so a rerun agrees)."""
    return max(1, min(256, n_parts))


def ids_file(work_dir: str, name: str) -> str:
    return storage.join(work_dir, IDS, f"{name}.parquet")


def write_ids(work_dir: str, name: str, ids: list[str], places: list[str], n_buckets: int) -> None:
    """The kept ids of a part, with their row in its kept file and their place (file and position), one
    row group per bucket, so a bucket's task reads only its share. Written before the part's commit."""
    bucket = [int(i[:8], 16) % n_buckets for i in ids]  # ids are hex digests (schema.stable_id)
    t = pa.table({"id": ids, "bucket": bucket, "row": range(len(ids)), "place": places}, schema=IDS_SCHEMA)
    t = t.sort_by([("bucket", "ascending"), ("row", "ascending")])
    fs, path = storage.resolve(ids_file(work_dir, name))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with pq.ParquetWriter(path, IDS_SCHEMA, filesystem=fs) as w:
        b = t["bucket"].to_numpy()
        starts = [0] + [i for i in range(1, len(b)) if b[i] != b[i - 1]] + [len(b)]
        for lo, hi in zip(starts, starts[1:]):
            w.write_table(t.slice(lo, hi - lo))
        if not len(b):
            w.write_table(t)


def _bucket_rows(work_dir: str, names: list[str], b: int) -> pa.Table:
    """Bucket b's rows of every part's ids file (found by the row groups' statistics), with the part's
    index in the plan."""
    tables = []
    for i, name in enumerate(names):
        fs, path = storage.resolve(ids_file(work_dir, name))
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            md = pf.metadata
            col = IDS_SCHEMA.get_field_index("bucket")
            groups = [
                g
                for g in range(md.num_row_groups)
                if md.row_group(g).num_rows and md.row_group(g).column(col).statistics.min == b
            ]
            if groups:
                t = pf.read_row_groups(groups)
                tables.append(t.append_column("part", pa.array([i] * t.num_rows, pa.int64())))
    return (
        pa.concat_tables(tables) if tables else IDS_SCHEMA.append(pa.field("part", pa.int64())).empty_table()
    )


def _bucket(b: int, names: list[str], work_dir: str) -> dict[int, int]:
    """Task: the repeated ids of bucket b. Writes their later copies (part, row, id, the first copy's
    place) to _dups/<b>.parquet and returns how many each part holds, by the part's index in the plan."""
    t = _bucket_rows(work_dir, names, b)
    counts = t.group_by("id").aggregate([("id", "count")])
    repeated = counts.filter(pc.greater(counts["id_count"], 1))["id"]
    if not len(repeated):
        return {}
    t = t.filter(pc.is_in(t["id"], repeated)).sort_by([("part", "ascending"), ("row", "ascending")])
    first: dict[str, str] = {}
    later: dict[str, list] = {"part": [], "row": [], "id": [], "first": []}
    for r in t.to_pylist():  # only the rows of repeated ids
        if r["id"] not in first:
            first[r["id"]] = r["place"]
            continue
        for k, v in (("part", r["part"]), ("row", r["row"]), ("id", r["id"]), ("first", first[r["id"]])):
            later[k].append(v)
    out = pa.table(later)
    fs, path = storage.resolve(storage.join(work_dir, DUPS, f"{b}.parquet"))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(out, path, filesystem=fs)
    held: dict[int, int] = {}
    for p in later["part"]:
        held[p] = held.get(p, 0) + 1
    return held


def _later_copies(work_dir: str, index: int) -> dict[int, tuple[str, str]]:
    """Row in the kept file -> (id, the first copy's place), for part `index`, from every bucket."""
    out = {}
    for uri in storage.list_files(storage.join(work_dir, DUPS), suffix=".parquet"):
        fs, path = storage.resolve(uri)
        t = pq.read_table(path, filesystem=fs, filters=[("part", "=", index)])
        for r in t.to_pylist():
            out[r["row"]] = (r["id"], r["first"])
    return out


def _rewrite(name: str, index: int, work_dir: str, secrets: dict[str, str], record: dict) -> dict:
    """Task: part `name` again, as part `name-d`, with its later copies of repeated ids dropped; then its
    first files are removed (the commit of `name` stays, so a rerun reuses it and skips this)."""
    later = _later_copies(work_dir, index)

    def process(spec: dict, stats: dict):
        stats.update(record["stats"], docs_in=record["docs_in"])
        fs, path = storage.resolve(parts.kept_file(work_dir, name))
        kept = pq.read_table(path, filesystem=fs)
        reason = [None] * kept.num_rows
        detail = [None] * kept.num_rows
        meta = kept["meta"].to_pylist()
        for row, (i, place) in later.items():
            reason[row] = "duplicate_id"
            detail[row] = f"{meta[row]}: id {i} is already the id of {place}"[:2000]
        yield kept.append_column("drop_reason", pa.array(reason, pa.string())).append_column(
            "drop_detail", pa.array(detail, pa.string())
        )
        dropped = parts.dropped_file(work_dir, name)
        if storage.exists(dropped):
            fs, path = storage.resolve(dropped)
            yield pq.read_table(path, filesystem=fs)

    rec = parts.write_part(process, Part(name + REWRITE, {}), work_dir, secrets)
    for uri in (parts.kept_file(work_dir, name), parts.dropped_file(work_dir, name)):
        storage.remove_file(uri)
    return rec


def mark_duplicate_ids(
    todo: list[Part], work_dir: str, secrets: dict[str, str], reused: int
) -> tuple[PartsResult, int]:
    """The id pass over committed parts (see the module docstring); returns the stage's totals over each
    part's latest commit, and how many parts were rewritten."""
    import ray

    names = [p.name for p in todo]
    commits = parts.committed(work_dir)
    bucket = ray.remote(num_cpus=1)(_bucket)
    held: dict[int, int] = {}
    for h in ray.get([bucket.remote(b, names, work_dir) for b in range(buckets_for(len(names)))]):
        for p, c in h.items():
            held[p] = held.get(p, 0) + c
    rewrite = ray.remote(num_cpus=1)(_rewrite)
    todo_rw = [i for i in sorted(held) if names[i] + REWRITE not in commits]
    if held:
        logger.info("%s: %d parts hold later copies of repeated ids: rewritten", work_dir, len(held))
    for rec in ray.get([rewrite.remote(names[i], i, work_dir, secrets, commits[names[i]]) for i in todo_rw]):
        commits[rec["name"]] = rec
    for i in held:  # a kill between a rewrite's commit and the removal of the first files leaves them
        for uri in (parts.kept_file(work_dir, names[i]), parts.dropped_file(work_dir, names[i])):
            storage.remove_file(uri)
    total = PartsResult(parts=len(names), parts_reused=reused)
    for i, name in enumerate(names):
        r = commits[name + REWRITE] if i in held else commits[name]
        total.docs_in += r["docs_in"]
        total.docs_out += r["docs_out"]
        total.words += r["words"]
        for k, v in r["dropped"].items():
            total.dropped[k] = total.dropped.get(k, 0) + v
        total.stats.append(r["stats"])
    total.dropped = dict(sorted(total.dropped.items()))
    return total, len(held)
