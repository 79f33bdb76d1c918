"""`python -m pipeline.tools.config_doc > docs/config.md`: the config reference, generated from the models.

Each field is documented by the comment on its line (or the comment lines just above it) in the
section's source, which is where the code already explains it; the types and defaults come from
pydantic. A test regenerates the page and fails when docs/config.md differs from the models.
"""

from __future__ import annotations

import inspect
import io
import json
import sys
import tokenize
import typing

from pydantic import BaseModel

from pipeline.config import Config


def field_comments(cls: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment written beside (or above) its declaration in the class body."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass.__module__.startswith(
            "pydantic"
        ):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # built by create_model: no source of its own
            continue
        lines = source.splitlines()
        above: list[str] = []
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        line_comment = {
            t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT
        }
        for no, line in enumerate(lines, start=1):
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(line_comment.get(no, ""))
                continue
            name = stripped.split(":", 1)[0]
            if (
                line.startswith("    ")
                and not line.startswith("     ")
                and name.isidentifier()
                and ":" in stripped
            ):
                text = line_comment.get(no) or " ".join(above)
                if text:
                    comments[name] = text
            above = []
    return comments


def _sections(annotation) -> list[type[BaseModel]]:
    """The Section classes an annotation refers to (through Optional, lists, dicts and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _sections(arg)
    return out


def _type_name(annotation) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    for mod in ("pipeline.", "synth.", "train_handoff."):
        while mod in text:  # drop module paths of section classes
            start = text.index(mod)
            end = start
            while end < len(text) and (text[end].isalnum() or text[end] in "._"):
                end += 1
            text = text[:start] + text[start:end].rsplit(".", 1)[-1] + text[end:]
    return text.replace("NoneType", "None")


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return f"`{json.dumps(value, default=str)}`"


def paths_of(name: str, cls: type[BaseModel], where: list[str]) -> str:
    return f"{where[0]}.{name}" if where[0] else name


def undocumented() -> list[str]:
    """Fields of plain (non-section) type with no comment: the reference would leave them unexplained."""
    missing, queue, seen = [], [Config], set()
    while queue:
        cls = queue.pop()
        if cls in seen:
            continue
        seen.add(cls)
        comments = field_comments(cls)
        for name, field in cls.model_fields.items():
            sub = _sections(field.annotation)
            queue += sub
            if not sub and name not in comments:
                missing.append(f"{cls.__module__}.{cls.__name__}.{name}")
    return sorted(missing)


def render() -> str:
    out = [
        "# Config reference",
        "",
        "Generated from the pydantic models by `python -m pipeline.tools.config_doc > docs/config.md`;",
        "`tests/test_config_doc.py` fails when this page and the models differ. Unknown keys are errors.",
        "A recipe is YAML with the top-level sections below; each stage runs only if its section is present.",
        "",
    ]
    paths: dict[type[BaseModel], list[str]] = {}  # every key path a section class appears at, in order
    queue: list[tuple[str, type[BaseModel]]] = [("", Config)]
    while queue:
        path, cls = queue.pop(0)
        if cls in paths:
            paths[cls].append(path)
            continue
        paths[cls] = [path]
        for name, field in cls.model_fields.items():
            queue += [(f"{path}.{name}" if path else name, sub) for sub in _sections(field.annotation)]
    for cls, where in paths.items():
        heading = ", ".join(f"`{p}`" for p in where) if where != [""] else "top level"
        out += [f"## {heading} ({cls.__name__})", ""]
        doc = cls.__doc__ if cls.__doc__ and cls.__module__ != "pydantic.main" else None
        if doc:
            out += [inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " "), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        comments = field_comments(cls)
        for name, field in cls.model_fields.items():
            sub = _sections(field.annotation)
            meaning = comments.get(name) or (f"see `{paths_of(name, cls, where)}`" if sub else "")
            type_name = _type_name(field.annotation).replace("|", "\\|")
            out.append(
                f"| `{name}` | `{type_name}` | {_default(field)} | {meaning.replace('|', chr(92) + '|')} |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
