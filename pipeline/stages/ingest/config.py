"""Config of stage `ingest`: which files to read, as which source, and the size limits."""

from __future__ import annotations

import glob
import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.section import Section


class IngestInput(Section):
    path: str  # a file, a directory (read recursively) or a glob; local or a URL (s3://, gs://, ...)
    source: str = Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")  # e.g. web/python-docs
    format: Literal["auto", "warc", "jsonl", "parquet"] = "auto"  # auto: from the file name
    text_field: str = "text"  # JSONL/Parquet: the field with the document text
    id_field: str | None = "id"  # JSONL/Parquet: a given id, if any (made stable per source)
    url_field: str | None = "url"  # JSONL/Parquet: the field with the page URL, if any

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str) -> str:
        if "://" not in v and not glob.glob(v):
            raise ValueError(f"no file or directory matches '{v}' (relative to {os.getcwd()})")
        return v


class IngestConfig(Section):
    inputs: list[IngestInput] = Field(min_length=1)
    max_doc_bytes: int = Field(1_000_000, ge=1)  # a longer text is dropped as too_large
    max_html_bytes: int = Field(10_000_000, ge=1)  # a larger HTML payload is dropped as too_large
    min_text_chars: int = Field(1, ge=1)  # a shorter text (after extraction) is dropped as empty_text
    favour_precision: bool = True  # trafilatura: prefer less boilerplate over more text
    extract_timeout: float = Field(10.0, gt=0)  # seconds a page may take; slower: dropped as extract_timeout
    count_inputs: bool = True  # count records apart (footer, lines, gzip members); fail on a difference
    # larger files are cut into parts (tasks, commits) this big; an input under 32 parts of it, finer
    part_bytes: int = Field(256 * 2**20, ge=1)

    @model_validator(mode="after")
    def _sources_unique_per_path(self) -> "IngestConfig":
        seen = set()
        for i in self.inputs:
            if (i.path, i.source) in seen:
                raise ValueError(f"input '{i.path}' is listed twice for source '{i.source}'")
            seen.add((i.path, i.source))
        return self
