"""Connected components of the candidate graph: which documents end up in one duplicate cluster."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CLUSTER_SCHEMA = pa.schema([("rank", pa.string()), ("root", pa.string()), ("size", pa.int64())])


def clusters(edges: pa.Table) -> pa.Table:
    """(rank, root, size) for every node of `edges` (columns a, b): root is the smallest rank of the
    node's component (the document kept), size the number of documents in it.

    Runs on the driver over the edges only, with scipy's compiled connected components. It holds two
    rank strings per (document, bucket) pair of the documents that have a candidate duplicate (at most
    bands + 1 pairs per such document), never the documents themselves."""
    if edges.num_rows == 0:
        return CLUSTER_SCHEMA.empty_table()
    ends = pa.concat_arrays([edges["a"].combine_chunks(), edges["b"].combine_chunks()])
    uniq = pc.unique(ends)
    nodes = pc.take(uniq, pc.array_sort_indices(uniq))  # in rank (keep) order
    a = pc.index_in(edges["a"], value_set=nodes).to_numpy()
    b = pc.index_in(edges["b"], value_set=nodes).to_numpy()
    n = len(nodes)
    _, label = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)
    # nodes are sorted, so the smallest node index of a label is its component's first document
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    size = np.bincount(label)
    return pa.table({"rank": nodes, "root": pc.take(nodes, pa.array(first[label])), "size": pa.array(size[label], pa.int64())})
