"""Connected components of the candidate graph on Ray: which documents end up in one duplicate cluster.

Alternating large-star / small-star (Kiveris et al. 2014, "Connected Components in MapReduce and
Beyond"; text-dedup runs the same on Spark), each step one shuffle by node (shuffle.py):
- large-star: every node u links each larger neighbour to m(u), the smallest of u and its neighbours;
- small-star: every node u links itself and each smaller neighbour to the smallest of those.
A step emits at most one edge per edge it owns, so the edge count never grows, and the graph converges to
one star per component around its smallest rank (the document kept). Ray Data has no graph algorithms;
the steps are written with pyarrow's group_by/join over whole partitions.

Each row says whether the step that made it changed anything, so a round's fixed point is a count: no
node has both smaller and larger neighbours, and none has more than one smaller neighbour, which is
exactly a forest of stars centred on their smallest node.
"""

from __future__ import annotations

from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.stages.dedup.shuffle import PART, Source, files, gather, part_of, scatter
from pipeline.stages.dedup.steps import Steps

CLUSTER_SCHEMA = pa.schema([("rank", pa.string()), ("root", pa.string()), ("size", pa.int64())])
MAX_ROUNDS = 64  # O(log^2 n) rounds are proven; a chain of 10^9 nodes needs far fewer than this


def _large_star_rows(t: pa.Table, partitions: int, select=None) -> pa.Table:
    """Every edge (of `select(t)`, if given) from both ends, as (u, v), partitioned by u."""
    if select is not None:
        t = select(t)
    u = pa.chunked_array(t["a"].chunks + t["b"].chunks, pa.string())
    v = pa.chunked_array(t["b"].chunks + t["a"].chunks, pa.string())
    return pa.table({PART: part_of(u, partitions), "u": u, "v": v})


def _large_star(t: pa.Table) -> pa.Table:
    """(a, b, changed) = (v, m(u), m(u) != u) for each neighbour v > u of each node u."""
    t = t.group_by(["u", "v"]).aggregate([])
    t = t.join(t.group_by("u").aggregate([("v", "min")]), "u")
    m = pc.min_element_wise(t["u"], t["v_min"])
    out = pa.table({"a": t["v"], "b": m, "changed": pc.not_equal(m, t["u"])})
    return out.filter(pc.greater(t["v"], t["u"]))


def _small_star_rows(t: pa.Table, partitions: int) -> pa.Table:
    """Edges (a, b) with a > b, partitioned by a, the larger end."""
    return t.append_column(PART, part_of(t["a"], partitions))


def _small_star(t: pa.Table) -> pa.Table:
    """Each node a and each of its smaller neighbours, other than the smallest m, linked to m; `changed`
    when a had more than one smaller neighbour or an edge into a was changed by the large-star step."""
    t = t.group_by(["a", "b"]).aggregate([("changed", "any")])
    g = t.group_by("a").aggregate([("b", "min"), ("b", "count"), ("changed_any", "any")])
    centre = pa.table(
        {"a": g["a"], "b": g["b_min"], "changed": pc.or_(pc.greater(g["b_count"], 1), g["changed_any_any"])}
    )
    t = t.join(g.select(["a", "b_min"]), "a")
    t = t.filter(pc.not_equal(t["b"], t["b_min"]))
    leaves = pa.table({"a": t["b"], "b": t["b_min"], "changed": pa.array([True] * t.num_rows, pa.bool_())})
    out = pa.concat_tables([centre, leaves]).group_by(["a", "b"]).aggregate([("changed", "any")])
    return out.rename_columns(["a", "b", "changed"])


def _size_rows(t: pa.Table, partitions: int) -> pa.Table:
    """Star edges (leaf a, centre b), partitioned by the centre."""
    return t.select(["a", "b"]).append_column(PART, part_of(t["b"], partitions))


def _sizes(t: pa.Table) -> pa.Table:
    """(rank, root, size) for every leaf and centre of the stars in this partition."""
    t = t.group_by(["a", "b"]).aggregate([])
    g = t.group_by("b").aggregate([("a", "count")])
    t = t.join(g, "b")
    leaves = pa.table({"rank": t["a"], "root": t["b"], "size": pc.add(t["a_count"], 1)})
    centres = pa.table({"rank": g["b"], "root": g["b"], "size": pc.add(g["a_count"], 1)})
    return pa.concat_tables([leaves.cast(CLUSTER_SCHEMA), centres.cast(CLUSTER_SCHEMA)])


STAR_ROWS = pa.schema([("u", pa.string()), ("v", pa.string())])
STAR_EDGES = pa.schema([("a", pa.string()), ("b", pa.string()), ("changed", pa.bool_())])
SIZE_ROWS = pa.schema([("a", pa.string()), ("b", pa.string())])


def _shuffle(
    steps: Steps, step: str, sources: list[Source], partitions: int, schema: pa.Schema, fn
) -> tuple[list[str], dict[str, int]]:
    """One committed shuffle: the sources scattered by node, `fn` over each partition; its output files
    and counts."""

    def compute(d: str) -> dict[str, int]:
        scatter(sources, partitions, storage.join(d, "in"))
        return gather(partitions, {"t": (storage.join(d, "in"), schema)}, fn, storage.join(d, "out"))

    counts = steps.run(step, compute)
    return files(steps.dir(step, "out")), counts


def _large_star_step(t: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    return _large_star(t), {}


def _small_star_step(t: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    out = _small_star(t)
    return out, {"changed": pc.sum(out["changed"]).as_py() or 0}


def _sizes_step(t: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    out = _sizes(t)
    return out, {"roots": pc.sum(pc.equal(out["rank"], out["root"])).as_py() or 0}


def clusters(
    steps: Steps, edges: list[tuple[str, Callable]], partitions: int, max_rounds: int = MAX_ROUNDS
) -> tuple[list[str], dict[str, int]]:
    """Files of (rank, root, size) rows for every node of the graph whose edges the `edges` sources give
    (each function returns columns a, b: rank strings, no self-loops): root is the smallest rank of the
    node's component, size the number of nodes in it; and counts: `docs_with_duplicates`, `clusters`,
    `cc_rounds` (the rounds it took; the last one confirms that nothing changes). Each shuffle of each
    round is a committed step (`cc<round>-large`, `cc<round>-small`), so a rerun resumes after the last
    committed one."""
    sources = [(f, _large_star_rows, {"select": fn}) for f, fn in edges]
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (returned: the rounds it took)
        large, _ = _shuffle(steps, f"cc{rounds}-large", sources, partitions, STAR_ROWS, _large_star_step)
        sources = [(f, _small_star_rows, {}) for f in large]
        small, counts = _shuffle(
            steps, f"cc{rounds}-small", sources, partitions, STAR_EDGES, _small_star_step
        )
        sources = [(f, _large_star_rows, {}) for f in small]
        if not counts.get("changed"):
            break
    else:
        raise RuntimeError(
            f"dedup: connected components did not converge in {max_rounds} large-star/small-star rounds "
            f"({counts.get('changed')} edges still changing)"
        )
    sizes = [(f, _size_rows, {}) for f in small]
    out, counts = _shuffle(steps, "clusters", sizes, partitions, SIZE_ROWS, _sizes_step)
    return out, {
        "docs_with_duplicates": counts.get("rows", 0),
        "clusters": counts.get("roots", 0),
        "cc_rounds": rounds,
    }
