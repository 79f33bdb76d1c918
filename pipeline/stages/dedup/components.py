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

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.stages.dedup.shuffle import PART, by_part, part_of, tally

CLUSTER_SCHEMA = pa.schema([("rank", pa.string()), ("root", pa.string()), ("size", pa.int64())])
MAX_ROUNDS = 64  # O(log^2 n) rounds are proven; a chain of 10^9 nodes needs far fewer than this


def _large_star_rows(t: pa.Table, partitions: int) -> pa.Table:
    """Every edge from both ends, as (u, v), partitioned by u."""
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


def _step(ds: "ray.data.Dataset", rows, reduce, partitions: int) -> "ray.data.Dataset":
    """`rows` tags each row with its partition, `reduce` runs on each partition."""
    return by_part(
        ds.map_batches(rows, batch_format="pyarrow", fn_kwargs={"partitions": partitions}), partitions, reduce
    )


def _changed(t: pa.Table) -> dict[str, int]:
    return {"changed": pc.sum(t["changed"]).as_py() or 0}


def clusters(
    pairs: "ray.data.Dataset", partitions: int, max_rounds: int = MAX_ROUNDS
) -> tuple["ray.data.Dataset", int]:
    """(rank, root, size) for every node of `pairs` (columns a, b: rank strings), as a Dataset: root is
    the smallest rank of the node's component, size the number of nodes in it; and the rounds it took
    (the last one confirms that nothing changes; 0 without edges). `pairs` has no self-loops. Each round is
    materialized (in the object store, which spills to disk) so that the next one does not recompute it."""
    edges = pairs.select_columns(["a", "b"]).materialize()
    if edges.count() == 0:  # Ray's hash shuffle cannot partition a Dataset without a single row
        return ray.data.from_arrow(CLUSTER_SCHEMA.empty_table()), 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (returned: the rounds it took)
        edges = _step(
            _step(edges, _large_star_rows, _large_star, partitions), _small_star_rows, _small_star, partitions
        )
        edges = edges.materialize()
        changed = tally(edges, _changed).get("changed", 0)
        if not changed:
            break
    else:
        raise RuntimeError(
            f"dedup: connected components did not converge in {max_rounds} large-star/small-star rounds "
            f"({changed} edges still changing)"
        )
    return _step(edges, _size_rows, _sizes, partitions), rounds
