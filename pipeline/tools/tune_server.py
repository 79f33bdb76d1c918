"""`phicurate tune OUTPUT --serve`: a local page to move select's thresholds and see at once what they keep.

The signal columns of annotate's output are read once into memory (Arrow, then numpy; tens of bytes per
document and signal: this page is for what one machine holds); ids and texts are read back only for the
documents the page shows, from the row groups that hold them. Nothing is recomputed from text. A
threshold change rebuilds the select section, asks rules.py for its rules (the same Rule.fails that
`select` runs) and caches each rule's failure mask, so a change evaluates one new mask and combines the
rest with numpy: first failing rule per document, then bincounts for the totals.

Served with Starlette on uvicorn (both installed with ray[serve] and vLLM, and well kept); the page's
HTML, JS and CSS ship in pipeline/tools/tune_static/ (no CDN: it works offline).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError
from pipeline.stages.select import rules
from pipeline.stages.select.config import SelectConfig
from pipeline.tools import tune, tune_params
from pipeline.tools.tune_params import Param

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tune_static")
BINS = 48
MASK_CACHE = 96  # failure masks kept (one byte per document each)
EXCERPT = 700  # characters of a margin document's text shown


def first_row(code: np.ndarray) -> np.ndarray:
    """0 where no bit is set, else 1 + the position of the lowest set bit (the first failing rule)."""
    lowest = code & (~code + np.uint64(1))
    exponent = (lowest.astype(np.float32).view(np.uint32) >> np.uint32(23)).astype(np.int64)
    return np.where(exponent == 0, 0, exponent - 126)  # float32 exponent bias 127: 2**b -> 127 + b


class Signals:
    """annotate's signal columns in memory, and select's rules evaluated over them."""

    def __init__(self, output: str, cfg: SelectConfig):
        self.output = output
        self.base = cfg
        self.params = tune_params.params(cfg, set(tune.check_columns(output, []).names))
        cols = [c for p in self.params for c in p.columns]
        t0 = time.perf_counter()
        # ids and texts are read back for the few documents the page shows, not held
        table = tune.read_signals(output, list(dict.fromkeys(["source", tune.WORDS, *cols])))
        self.table = table.combine_chunks()
        self.n = len(self.table)
        self.words = self.table[tune.WORDS].to_numpy(zero_copy_only=False).astype(np.int64)
        src = pc.dictionary_encode(self.table["source"]).combine_chunks()
        self.table = self.table.drop_columns(["source"])
        self.sources = src.dictionary.to_pylist()
        self.src = src.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self.src_docs = np.bincount(self.src, minlength=len(self.sources))
        self.src_words = np.rint(np.bincount(self.src, self.words, len(self.sources))).astype(np.int64)
        self._values: dict[str, np.ndarray] = {}
        self._bins: dict[str, np.ndarray] = {}
        self._edges: dict[str, np.ndarray] = {}
        self._masks: OrderedDict[rules.Rule, np.ndarray] = OrderedDict()
        # Bit i of code[doc] is set when the doc fails the rule at position i of select's order, so the
        # lowest set bit is its first failing rule; a change flips one rule's bits instead of recombining all.
        self.bit = {reason: i for i, reason in enumerate(tune_params.rule_order())}
        assert len(self.bit) < 64, "more rules than bits in the failure code"
        self.code = np.zeros(self.n, np.uint64)
        self._coded: dict[int, rules.Rule] = {}  # bit -> the rule whose mask is in code
        self.row = np.zeros(self.n, np.int64)  # first_row(code): 0 kept, 1 + bit of the first failing rule
        # documents and words per (row, source), kept up to date with `row`
        self.docs_table = np.zeros((65, len(self.sources)), np.int64)
        self.words_table = np.zeros((65, len(self.sources)), np.int64)
        self.docs_table[0], self.words_table[0] = self.src_docs, self.src_words
        self.lock = threading.Lock()  # the caches are shared by the server's threads
        self.hists = {c: self._hist(c) for c in dict.fromkeys(cols) if c != "lang"}
        self.langs = self._langs() if "lang" in cols else []
        logger.info("tune: %d documents, %d columns in %.1f s", self.n, len(cols), time.perf_counter() - t0)

    def values(self, column: str) -> np.ndarray:
        if column not in self._values:  # nulls become NaN: they never fail a threshold, as in select
            v = pc.cast(self.table[column], pa.float64()).to_numpy(zero_copy_only=False)
            self._values[column] = v
        return self._values[column]

    def _hist(self, column: str) -> dict:
        v = self.values(column)
        finite = v[~np.isnan(v)]
        thresholds = [p.value for p in self.params if column in p.columns and p.kind == "number"]
        if not len(finite):
            return {"edges": [0.0, 1.0], "counts": [0], "log": False, "integer": False}
        lo, hi = np.quantile(finite, [0.001, 0.999]).tolist()
        lo, hi = min([lo, *thresholds]), max([hi, *thresholds])
        integer = pa.types.is_integer(self.table[column].type)
        log = lo >= 0 and hi > 1000 and hi > 100 * max(lo, 1)
        if integer and hi - lo <= BINS:
            edges = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.5)
        elif log:
            edges = np.expm1(np.linspace(np.log1p(lo), np.log1p(hi), BINS + 1))
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1, BINS + 1)
        self._edges[column] = edges
        counts = np.bincount(self.bins(column), minlength=len(edges))[: len(edges) - 1]
        return {"edges": edges.tolist(), "counts": counts.tolist(), "log": bool(log), "integer": integer}

    def bins(self, column: str) -> np.ndarray:
        """Each document's histogram bin (values outside go to the end bins; NaN to an extra last bin)."""
        if column not in self._bins:
            v, edges = self.values(column), self._edges[column]
            b = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
            b[np.isnan(v)] = len(edges) - 1
            self._bins[column] = b.astype(np.int32)
        return self._bins[column]

    def _langs(self) -> list[list]:
        counts = pc.value_counts(self.table["lang"]).to_pylist()
        counts.sort(key=lambda c: -c["counts"])
        return [[c["values"], c["counts"]] for c in counts[:40]]

    def mask(self, rule: rules.Rule) -> np.ndarray:
        """Documents failing `rule` (rules.py's own comparison), cached by rule."""
        m = self._masks.get(rule)
        if m is None:
            m = rule.fails(self.table).to_numpy(zero_copy_only=False)
            self._masks[rule] = m
            if len(self._masks) > MASK_CACHE:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(rule)
        return m

    def evaluate(self, cfg: SelectConfig, active: str | None = None, n_margin: int = 5) -> dict:
        """Totals select would produce with cfg; for the `active` setting, the histogram of documents
        passing every other rule and the documents just kept / just dropped by it."""
        with self.lock:
            return self._evaluate(cfg, active, n_margin)

    def _recode(self, rule_list: list[rules.Rule]) -> None:
        """Bring `code` to rule_list: flip the bits of each rule that changed, was added or was removed,
        and move only the documents whose bits flipped between the count tables."""
        wanted = {self.bit[r.reason]: r for r in rule_list}
        for b in set(wanted) | set(self._coded):
            old, new = self._coded.get(b), wanted.get(b)
            if old == new:
                continue
            if old is None or new is None:
                changed = np.flatnonzero(self.mask(new if old is None else old))
            else:
                changed = np.flatnonzero(self.mask(old) ^ self.mask(new))
            self.code[changed] ^= np.uint64(1 << b)
            before = self.row[changed]
            after = first_row(self.code[changed])
            self.row[changed] = after
            src, words = self.src[changed], self.words[changed]
            shape = self.docs_table.size
            for table, weights in ((self.docs_table, None), (self.words_table, words)):
                delta = np.bincount(after * len(self.sources) + src, weights, shape) - np.bincount(
                    before * len(self.sources) + src, weights, shape
                )
                table += np.rint(delta).astype(np.int64).reshape(table.shape)
            if new is None:
                del self._coded[b]
            else:
                self._coded[b] = new

    def _evaluate(self, cfg: SelectConfig, active: str | None, n_margin: int) -> dict:
        t0 = time.perf_counter()
        rule_list = rules.rules(cfg)
        self._recode(rule_list)
        code, docs, words = self.code, self.docs_table, self.words_table
        out: dict[str, Any] = {
            "docs": self.n,
            "tokens": int(self.words.sum()),
            "kept_docs": int(docs[0].sum()),
            "kept_tokens": int(words[0].sum()),
            "drops": [
                {
                    "reason": r.reason,
                    "docs": int(docs[1 + self.bit[r.reason]].sum()),
                    "tokens": int(words[1 + self.bit[r.reason]].sum()),
                }
                for r in rule_list
            ],
            "sources": [
                {
                    "source": s,
                    "docs": int(self.src_docs[i]),
                    "tokens": int(self.src_words[i]),
                    "kept_docs": int(docs[0, i]),
                    "kept_tokens": int(words[0, i]),
                }
                for i, s in enumerate(self.sources)
            ],
        }
        p = next((p for p in self.params if p.key == active), None)
        if p is not None and p.columns:
            mine = [r for r in rule_list if r.reason in p.reasons]
            bits = sum(1 << self.bit[r] for r in p.reasons)
            passing = (code & np.uint64(((1 << 64) - 1) ^ bits)) == 0  # no other rule fails
            out["active"] = p.key
            out["others_docs"] = int(passing.sum())
            out["overlay"] = {
                c: np.bincount(self.bins(c)[passing], minlength=len(self._edges[c]))[:-1].tolist()
                for c in p.columns
                if c in self.hists
            }
            bounded = [r for r in mine if r.keeps_above is not None]
            if bounded:
                out["margin"] = self._margin(bounded[0], self.mask(bounded[0]), passing, n_margin)
        out["ms"] = round(1000 * (time.perf_counter() - t0), 2)
        return out

    def _margin(self, rule: rules.Rule, failing: np.ndarray, passing: np.ndarray, n: int) -> dict:
        """The n documents passing every other rule nearest the threshold on each side, by value."""
        values = self.values(rule.column)
        cand = np.flatnonzero(passing & ~np.isnan(values))
        fail = failing[cand]
        out: dict[str, Any] = {"column": rule.column, "threshold": rule.threshold}
        for side, idx in (("kept", cand[~fail]), ("dropped", cand[fail])):
            dist = np.abs(values[idx] - rule.threshold)
            if len(idx) > n:  # the n nearest without sorting them all
                part = np.argpartition(dist, n)[:n]
                idx, dist = idx[part], dist[part]
            idx = idx[np.argsort(dist, kind="stable")]
            ids = [d["id"] for d in tune.read_rows(self.output, [int(i) for i in idx], ["id"])]
            out[side] = [
                {
                    "row": int(i),
                    "id": doc_id,
                    "source": self.sources[self.src[i]],
                    "value": float(values[i]),
                    "words": int(self.words[i]),
                }
                for i, doc_id in zip(idx, ids)
            ]
        return out

    def texts(self, rows: list[int]) -> dict[str, str]:
        """Text excerpts by row position, read back from annotate's Parquet (not held in memory)."""
        rows = [r for r in rows if 0 <= r < self.n][:50]
        if not rows:
            return {}
        got = tune.read_rows(self.output, rows, ["text"])
        return {str(r): (d.get("text") or "")[:EXCERPT] for r, d in zip(rows, got)}


def param_json(p: Param, sig: Signals) -> dict:
    return {
        "key": p.key,
        "kind": p.kind,
        "section": p.section,
        "integer": p.integer,
        "off": p.off,
        "reasons": p.reasons,
        "columns": p.columns,
        "keeps_above": p.keeps_above,
        "value": p.value,
        "on": p.on,
        "hists": {c: sig.hists[c] for c in p.columns if c in sig.hists},
    }


def make_app(sig: Signals, output: str, write_path: str, config_path: str | None):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def state(body: dict) -> SelectConfig:
        return tune_params.build(sig.base, sig.params, body.get("values", {}), body.get("on", {}))

    async def guarded(fn, *args) -> JSONResponse:
        try:
            return JSONResponse(await run_in_threadpool(fn, *args))
        except UserError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    async def index(request: Request):
        return FileResponse(os.path.join(STATIC, "index.html"))

    async def init(request: Request):
        def answer() -> dict:
            return {
                "output": output,
                "write_path": write_path,
                "config": config_path,
                "params": [param_json(p, sig) for p in sig.params],
                "langs": sig.langs,
                "totals": sig.evaluate(sig.base),
                "yaml": tune_params.select_yaml(sig.base),
            }

        return await guarded(answer)

    async def evaluate(request: Request):
        body = await request.json()

        def answer() -> dict:
            cfg = state(body)
            return {
                **sig.evaluate(cfg, body.get("active"), int(body.get("n", 5))),
                "yaml": tune_params.select_yaml(cfg),
            }

        return await guarded(answer)

    async def texts(request: Request):
        body = await request.json()
        return await guarded(sig.texts, [int(r) for r in body.get("rows", [])])

    async def write(request: Request):
        body = await request.json()

        def answer() -> dict:
            cfg = state(body)
            message = tune_params.write(write_path, cfg, config_path)
            print(f"phicurate tune: {message}", flush=True)
            return {"message": message, "path": write_path, "yaml": tune_params.select_yaml(cfg)}

        return await guarded(answer)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/init", init),
            Route("/api/evaluate", evaluate, methods=["POST"]),
            Route("/api/texts", texts, methods=["POST"]),
            Route("/api/write", write, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC)),
        ]
    )


def base_config(output: str, config_path: str | None) -> tuple[SelectConfig, str]:
    """--config's select section, else the last select run's, else select's defaults."""
    if config_path:
        from pipeline.config import load_config

        cfg = load_config(config_path).select
        if cfg is None:
            return SelectConfig(), f"select's defaults ({config_path} has no select section)"
        return cfg, f"{config_path}'s select section"
    try:
        return tune.select_config(output, None), "the last select run's rules"
    except UserError:
        return SelectConfig(), "select's defaults (no --config and no select run)"


def default_write_path(output: str) -> str:
    return os.path.join(output, "tune", "config.yaml") if "://" not in output else "tune-config.yaml"


def serve(
    output: str,
    config_path: str | None = None,
    port: int = 8765,
    host: str = "127.0.0.1",
    write_path: str | None = None,
    out=None,
) -> None:
    import uvicorn

    out = out or sys.stdout
    cfg, origin = base_config(output, config_path)
    write_path = write_path or default_write_path(output)
    t0 = time.perf_counter()
    sig = Signals(output, cfg)
    print(
        f"phicurate tune: {sig.n} documents, {len(sig.params)} settings from {origin}, "
        f"read in {time.perf_counter() - t0:.1f} s; the page's write button writes {write_path}",
        file=out,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise UserError(
            f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); try another port"
        ) from None
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    reach = (
        "only this machine can reach it"
        if local
        else "other machines can reach it, and it has no authentication"
    )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"phicurate tune: serving http://{shown}:{port}/ (bound to {host}: {reach}); Ctrl-C stops", file=out
    )
    out.flush()
    app = make_app(sig, output, write_path, config_path)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])
