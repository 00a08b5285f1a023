"""One Rego module compiled by rego-cpp (``regopy``), ready to evaluate many inputs.

``Interpreter.query`` re-compiles the module and the query on every call (~5 ms). ``build`` instead
compiles once into a bundle holding a plan for the ``result`` entrypoint, and a bundle query runs
that plan against the input currently set (~60-150 µs for the default policies).

An interpreter holds one input at a time and the rego-cpp calls release the GIL, so setting the
input and querying run under a per-program lock: concurrent callers of one policy queue there,
different policies run in parallel. How inputs reach rego-cpp is in ``native``.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import regopy

from shared.policy import native
from shared.policy.errors import EVALUATION_FAILED, PolicyError

_MODULE_NAME: Final = "policy.rego"
_KEPT_INPUTS: Final = 8
_KEPT_RESULTS: Final = 1024
# Built-ins whose value is not a function of the input: a policy using one is evaluated every time.
_IMPURE = re.compile(r"\b(?:time\.now_ns|rand\.|uuid\.|http\.send|opa\.runtime|net\.lookup)")
# rego-cpp reports errors as S-expressions with length-prefixed strings, e.g.
# ``(error 11:policy.rego|21|1 (errormsg 16:this is unclosed) ...)``: location = byte offset|length.
_ERROR = re.compile(rb"\(error\b\s*(?:(\d+):)?")
_MESSAGE = re.compile(rb"\(errormsg (\d+):")


def _prefixed(raw: bytes, match: re.Match[bytes]) -> tuple[bytes, int]:
    length = int(match.group(1))
    return raw[match.end() : match.end() + length], match.end() + length


def _line_col(source: bytes, offset: int) -> str:
    before = source[:offset]
    line = before.count(b"\n") + 1
    column = offset - before.rfind(b"\n")  # rfind is -1 on the first line: columns start at 1
    return f"{line}:{column}"


def describe_errors(text: str, source: str = "") -> str:
    """``line:col: message`` for each distinct error in a rego-cpp error report (the raw report's
    first line when it has no recognisable entries)."""
    raw, code = text.encode(), source.encode()
    found: list[str] = []
    for error in _ERROR.finditer(raw):
        where, pos = "", error.end()
        if error.group(1) is not None:
            _, pos = _prefixed(raw, error)
            location = re.match(rb"\|(\d+)\|", raw[pos:])
            if location is not None and code:
                where = _line_col(code, int(location.group(1))) + ": "
        message = _MESSAGE.search(raw, pos)
        if message is not None:
            entry = where + _prefixed(raw, message)[0].decode(errors="replace")
            if entry not in found:
                found.append(entry)
    if found:
        return "; ".join(found)
    return text.strip().splitlines()[0] if text.strip() else "unknown engine error"


class Undefined:
    """The query had no value (the rule did not fire); distinct from JSON ``null``."""


UNDEFINED: Final = Undefined()


class Program:
    """A module compiled once, with the plan for one entrypoint (``remits/attestation/result``)."""

    def __init__(self, source: str, entrypoint: str) -> None:
        self._entrypoint = entrypoint.encode()
        self._lock = threading.Lock()
        self._interpreter = regopy.Interpreter()
        # Errors come back as exceptions; the engine must not also print them to stdout.
        self._interpreter.log_level = regopy.LogLevel.NONE
        # A failing built-in is an error, not "undefined": in a first-match `else` chain an
        # undefined condition would silently fall through to a later, more lenient branch.
        self._interpreter.strict_built_in_errors = True
        try:
            self._interpreter.add_module(_MODULE_NAME, source)
            self._bundle = self._interpreter.build(None, [entrypoint])
        except regopy.RegoError as err:
            raise PolicyError("rego", describe_errors(str(err), source)) from None
        if not self._bundle.ok():
            raise PolicyError("rego", "rego-cpp could not build the policy")
        # Native inputs by canonical JSON (most recent last) and the one the interpreter holds.
        # Once claims are pruned away, consecutive attestations of one image often present the
        # same input; reusing it skips the builder (~60 µs) and, if still set, set_input (~25 µs).
        self._inputs: OrderedDict[str, int] = OrderedDict()
        self._current: str | None = None
        # A pure policy's answer depends on the (pruned) input alone, and across a fleet the
        # same input keeps coming back (one image, one state): answers by canonical input text.
        self._results: OrderedDict[str, tuple[bool, str]] | None = (
            None if _IMPURE.search(source) else OrderedDict()
        )
        weakref.finalize(self, _free_inputs, self._inputs)

    def _load(self, text: str, document: Mapping[str, Any], exact: bool) -> None:
        """Make ``document`` (whose canonical JSON is ``text``) the input; under the lock."""
        if not exact and text == self._current:
            return
        handle = None if exact else self._inputs.get(text)
        if handle is None and not exact:
            handle = native.build_input(document)
            if handle is not None:
                self._inputs[text] = handle
                if len(self._inputs) > _KEPT_INPUTS:
                    native.free_input(self._inputs.popitem(last=False)[1])
        if handle is not None and native.set_input(self._interpreter._impl, handle):
            self._inputs.move_to_end(text)
            self._current = text
        else:
            self._interpreter.set_input_term(text)
            self._current = None

    def _evaluate(self, document: Mapping[str, Any], exact: bool) -> tuple[bool, str]:
        text = _canonical(document)
        results = self._results
        try:
            with self._lock:
                if results is not None and (known := results.get(text)) is not None:
                    results.move_to_end(text)
                    return known
                self._load(text, document, exact)
                # The regopy objects own the interpreter and bundle (and free them); we borrow them.
                answer = native.query(self._interpreter._impl, self._bundle._impl, self._entrypoint)
                if results is not None and _succeeded(*answer):
                    results[text] = answer
                    if len(results) > _KEPT_RESULTS:
                        results.popitem(last=False)
                return answer
        except regopy.RegoError as err:
            raise PolicyError("input", describe_errors(str(err)), reason=EVALUATION_FAILED) from None

    def run(self, document: Mapping[str, Any]) -> Any:
        """The entrypoint's value for ``document`` as JSON-like Python data, or ``UNDEFINED``."""
        ok, text = self._evaluate(document, exact=False)
        if not _succeeded(ok, text):
            # rego-cpp 1.5 cannot json.marshal an array made by its input builder; the parser
            # path is the reference behaviour, so an error is only believed once it repeats there.
            ok, text = self._evaluate(document, exact=True)
        if not _succeeded(ok, text):
            raise PolicyError("result", describe_errors(text), reason=EVALUATION_FAILED)
        if text == "undefined":
            return UNDEFINED
        output = json.loads(text)
        expressions = (output[0] if isinstance(output, list) else output).get("expressions", [])
        return expressions[0] if expressions else UNDEFINED


def _succeeded(ok: bool, text: str) -> bool:
    # Some failures (an unknown function) come back "ok" with an S-expression error report as
    # the text: a real answer is JSON or the word "undefined", never "(error ...".
    return ok and not text.startswith("(")


def _canonical(document: Mapping[str, Any]) -> str:
    """The input as JSON with sorted keys: equal texts are equal Rego documents (objects are
    unordered), and the text is also what the parser path reads."""
    try:
        # ensure_ascii=False for the reason given in native._escaped: strings compare escaped.
        return json.dumps(
            document, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as err:
        raise PolicyError("input", f"not JSON data: {err}", reason=EVALUATION_FAILED) from None


def _free_inputs(inputs: OrderedDict[str, int]) -> None:
    for handle in inputs.values():
        native.free_input(handle)
    inputs.clear()
