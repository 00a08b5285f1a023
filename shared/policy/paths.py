"""Which parts of the input document a policy can read, so only those are handed to the engine.

rego-cpp builds the input document one node per scalar (about a microsecond each), so passing the
full claim set (70 SNP claims, up to 256 TDX event-log entries) would dominate an evaluation that
otherwise takes ~100 µs. The analysis is conservative: the input document is reachable only through
the ``input`` keyword, so every occurrence of it is inspected; a literal path (``input.tee``,
``input.claims["snp.measurement"]``) keeps that part, and anything else (bare ``input``, a computed
key, ``walk(input)``) keeps the whole input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# ``None`` = the whole value; a frozenset = only these keys of an object.
InputPaths = Mapping[str, frozenset[str] | None]

_INPUT = re.compile(r"\binput\b")
# One literal step of a reference: ``.name`` or ``["key"]`` (JSON string escapes allowed).
_STEP = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*("(?:[^"\\\n]|\\.)*")\s*\]')


def strip_comments(rego: str) -> str:
    """The source without ``#`` comments, respecting strings: prose in comments that mentions
    ``input`` must not widen the analysis, and a ``#`` inside a string must not hide code."""
    out: list[str] = []
    i, n = 0, len(rego)
    while i < n:
        ch = rego[i]
        if ch == "#":
            while i < n and rego[i] != "\n":
                i += 1
            continue
        if ch in '"`':
            end = i + 1
            while end < n and rego[end] != ch:
                end += 2 if ch == '"' and rego[end] == "\\" else 1
            out.append(rego[i : end + 1])
            i = end + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _step_name(match: re.Match[str]) -> str:
    return match.group(1) if match.group(1) is not None else str(json.loads(match.group(2)))


def input_paths(rego: str) -> InputPaths | None:
    """The top-level input fields (and, where only literal keys are used, the keys of those
    fields) the policy can read; ``None`` when it may read anything."""
    code = strip_comments(rego)
    paths: dict[str, frozenset[str] | None] = {}
    for found in _INPUT.finditer(code):
        first = _STEP.match(code, found.end())
        if first is None:
            return None
        name = _step_name(first)
        second = _STEP.match(code, first.end())
        if second is None:
            paths[name] = None
        elif name not in paths or paths[name] is not None:
            paths[name] = (paths.get(name) or frozenset()) | {_step_name(second)}
    return paths


def prune(document: Mapping[str, Any], paths: InputPaths | None) -> Mapping[str, Any]:
    """The part of ``document`` the policy can read (the document itself when unknown)."""
    if paths is None:
        return document
    out: dict[str, Any] = {}
    for name, keys in paths.items():
        if name not in document:
            continue
        value = document[name]
        if keys is None or not isinstance(value, Mapping):
            out[name] = value
        else:
            out[name] = {key: value[key] for key in keys if key in value}
    return out
