"""Secrets the config names, and their removal from everything a run writes or says.

A config never holds a secret itself: it names the environment variable that does (`api_key_env`). What
can leak is the value: an endpoint whose error message quotes the key puts it into `drop_detail`, a record
or a log line. The runner scrubs every such value from the documents it writes (every string column), from
records, from log messages and from the errors it raises. Any config key whose name ends in `_env` and
mentions a key, token, secret or password counts as naming a secret, so a new backend's secret is covered
by naming its field that way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

SECRET_KEY = re.compile(r"(key|token|secret|password)[a-z_]*_env$")
MIN_SECRET_CHARS = 4  # shorter values (e.g. "none") would redact ordinary words, and guard nothing


def secret_env_names(config) -> list[str]:
    """Names of the environment variables the config says hold secrets."""
    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and SECRET_KEY.search(k) and isinstance(v, str) and v:
                    names.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config.model_dump(mode="json"))
    return sorted(names)


def secret_values(config) -> dict[str, str]:
    """{value: replacement} for each secret set in this process's environment."""
    out = {}
    for name in secret_env_names(config):
        value = os.environ.get(name, "")
        if len(value) >= MIN_SECRET_CHARS:
            out[value] = f"[redacted:{name}]"
    return out


def redact_text(text: str, secrets: dict[str, str]) -> str:
    for value, repl in secrets.items():
        text = text.replace(value, repl)
    return text


def redact_obj(obj, secrets: dict[str, str]):
    """A JSON-like value with every secret removed from its strings (keys included)."""
    if not secrets:
        return obj
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    if isinstance(obj, dict):
        return {redact_obj(k, secrets): redact_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, secrets) for v in obj]
    return obj


def redact_table(batch: pa.Table, secrets: dict[str, str]) -> pa.Table:
    """Every top-level string column with the secrets replaced; runs on the workers, per block."""
    if not secrets:
        return batch
    for i, field in enumerate(batch.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            col = batch.column(i)
            for value, repl in secrets.items():
                col = pc.replace_substring(col, value, repl)
            batch = batch.set_column(i, field, col)
    return batch


def redact_exception(e: BaseException, secrets: dict[str, str]) -> None:
    """Scrub the secrets from an exception's arguments (what its message is made of), in place."""
    if secrets and any(v in str(e) for v in secrets):
        e.args = tuple(redact_text(a, secrets) if isinstance(a, str) else a for a in e.args)
        if any(v in str(e) for v in secrets):  # a message not built from args: replace it
            e.args = (redact_text(str(e), secrets),)


class RedactingFilter(logging.Filter):
    """Added to the root logger's handlers for a run: log lines lose the secrets before they are written."""

    def __init__(self, secrets: dict[str, str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(v in msg for v in self.secrets):
            record.msg, record.args = redact_text(msg, self.secrets), None
        return True


def _redacting_factory(make: Callable[..., logging.LogRecord], secrets: dict[str, str]):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        msg = record.getMessage()
        if any(v in msg for v in secrets):
            record.msg, record.args = redact_text(msg, secrets), None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if any(v in text for v in secrets):  # the traceback is formatted from exc_text from now on
                record.exc_text, record.exc_info = redact_text(text, secrets), None
        return record

    return factory


@contextlib.contextmanager
def redacted_records(secrets: dict[str, str]):
    """Every log record made in this process, by any logger for any handler (Ray Data's own log file has
    its own), loses the secrets from its message and traceback when it is made, for the block."""
    make = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_redacting_factory(make, secrets))
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)
