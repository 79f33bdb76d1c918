"""HTML to main text with datatrove's Trafilatura extractor (FineWeb's settings, less its dedup), each page in
datatrove's extractor sandbox under a time limit.

Trafilatura's `deduplicate` (on in datatrove) keeps a process-wide cache of paragraphs already seen and drops
them from later pages, so a page's text would depend on what the same worker extracted before: on
scheduling, worker count and retries. It is off here, which makes extraction a pure function of the page;
repeated text across pages is the dedup stage's job, done there deterministically over the whole corpus.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def _extractor(favour_precision: bool):
    from datatrove.pipeline.extractors import Trafilatura

    return Trafilatura(favour_precision=favour_precision, deduplicate=False)


def _extract_or_error(favour_precision: bool, html: str):
    """Runs in the sandbox's child process: an error comes back as a value (the sandbox re-raises it),
    instead of killing the child and costing a restart."""
    try:
        return _extractor(favour_precision).extract(html) or ""
    except Exception as e:  # trafilatura raises many types on broken markup
        return e


STARTUP_S = 60.0  # the most a fresh sandbox child may take to start (a fork on a loaded node is slow)


@lru_cache(maxsize=None)
def _sandbox(favour_precision: bool, timeout: float):
    """One sandbox (a forked child that extracts, killed and restarted when a page overruns) and its
    function per worker process and setting: starting one per batch would cost a fork and a warm-up each
    time, and the child keeps the function it was started with."""
    from datatrove.pipeline.extractors.base import ExtractorSandbox

    class Sandbox(ExtractorSandbox):
        """datatrove's sandbox, except that starting a child is not timed with the page's limit: a page
        after a killed one was dropped as a timeout when the new child was slow to start."""

        def _ensure_process(self, extract_fn):
            page, self.timeout = self.timeout, max(self.timeout, STARTUP_S)
            try:
                super()._ensure_process(extract_fn)
            finally:
                self.timeout = page

    return Sandbox(timeout=timeout), lambda html: _extract_or_error(favour_precision, html)


def extract_row(r: dict, html: str, favour_precision: bool = True, timeout: float = 10.0) -> None:
    """Fill row `r`'s `text` from its page `html`, in this worker's sandbox.

    A failed extraction is a drop (`extract_failed`), one over the time limit `extract_timeout`, both with
    the HTML kept aside; never a crash or a stalled worker. An empty one is left to the empty-text check.
    """
    sandbox, fn = _sandbox(favour_precision, timeout)
    try:
        r["text"] = sandbox.process_document(html, fn)
    except TimeoutError:
        r["text"], r["drop_reason"] = html[:65_536], "extract_timeout"
        r["drop_detail"] = f"{r['meta']}: extraction took over extract_timeout = {timeout} s"
    except Exception as e:  # an extractor error, or the child died (EOFError: out of memory, a crash)
        r["text"], r["drop_reason"] = html[:65_536], "extract_failed"
        r["drop_detail"] = f"{r['meta']}: {type(e).__name__}: {e}"[:2000]
