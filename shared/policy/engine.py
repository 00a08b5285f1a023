"""Policies compiled once per version and evaluated per request.

A policy is a Rego module in package ``remits.attestation`` or ``remits.resource`` whose ``result``
rule is the decision. ``compile_policy`` refuses, at store time, a module that does not parse, is in
the wrong package, or has no usable ``result``: it evaluates the module once against a neutral
probe input, so ``result`` must be defined for every well-formed input (use ``else`` or
``default``). An undefined or malformed result at request time is a ``PolicyError`` too: the
caller refuses rather than guessing.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Final

from shared.ear import TRUST_CLAIMS
from shared.kbs.wire import ATTESTED_TEES
from shared.policy.errors import EVALUATION_FAILED, INVALID, PolicyError
from shared.policy.explain import explain
from shared.policy.paths import InputPaths, input_paths, prune, strip_comments
from shared.policy.program import UNDEFINED, Program

ATTESTATION: Final = "attestation"
RESOURCE: Final = "resource"
KINDS: Final = (ATTESTATION, RESOURCE)
PACKAGES: Final = {ATTESTATION: "remits.attestation", RESOURCE: "remits.resource"}
_ENTRYPOINTS: Final = {kind: package.replace(".", "/") + "/result" for kind, package in PACKAGES.items()}

# The input every caller must provide: a missing part is a caller bug, and letting the policy see
# it as undefined could skip a check (an `else` branch whose condition is undefined falls through).
REQUIRED_INPUT: Final = {
    ATTESTATION: frozenset(
        {"tee", "claims", "platform_vector", "violations", "reference", "revocations", "notes"}
    ),
    RESOURCE: frozenset({"token", "resource", "revocations", "now"}),
}
_RESULT_KEYS: Final = {
    ATTESTATION: (frozenset({"vector", "notes"}), frozenset({"reject", "detail"})),
    RESOURCE: (frozenset({"allow", "reason"}), frozenset()),
}
_CLAIMS: Final = frozenset(TRUST_CLAIMS)

_DEFAULT_FILES: Final = {
    **{f"attestation.{tee}": f"attestation_{tee.replace('-', '_')}.rego" for tee in ATTESTED_TEES},
    "resource": "resource.rego",
}
_PACKAGE_LINE = re.compile(r"^\s*package\s+(\S+)", re.MULTILINE)
_RESULT_RULE = re.compile(r"^\s*(?:default\s+)?result\b", re.MULTILINE)

__all__ = [  # explain and the error constants are re-exported: callers import the engine alone
    "ATTESTATION",
    "EVALUATION_FAILED",
    "INVALID",
    "KINDS",
    "PACKAGES",
    "REQUIRED_INPUT",
    "RESOURCE",
    "CompiledPolicy",
    "PolicyCache",
    "PolicyError",
    "check_result",
    "compile_policy",
    "default_policy",
    "default_policy_source",
    "explain",
    "kind_of",
]


def kind_of(policy_id: str) -> str:
    """The kind a policy id names: ``resource``, else ``attestation`` (ids ``attestation.<tee>``)."""
    return RESOURCE if policy_id == RESOURCE else ATTESTATION


def _probe(kind: str, policy_id: str) -> dict[str, Any]:
    """A well-formed input in which nothing happened: every policy must produce a result for it."""
    if kind == RESOURCE:
        token = {"status": "", "tee": "", "iat": 0, "exp": 0, "jti": "", "measurement": "", "claims": {}}
        return {"token": token, "resource": {"path": "", "binding": {}}, "revocations": [], "now": 0}
    return {
        "tee": policy_id.partition(".")[2],
        "claims": {},
        "platform_vector": {},
        "violations": [],
        "reference": {},
        "revocations": [],
        "notes": [],
    }


def _malformed(where: str, detail: str) -> PolicyError:
    return PolicyError(where, detail, reason=EVALUATION_FAILED)


def _check_attestation(result: dict[str, Any]) -> None:
    vector = result["vector"]
    if not isinstance(vector, dict):
        raise _malformed("result.vector", "must be an object")
    for name, value in vector.items():
        if name not in _CLAIMS:
            raise _malformed("result.vector", f"unknown AR4SI claim {name!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not -128 <= value <= 127:
            raise _malformed("result.vector", f"{name}: {value!r} is not an integer in -128..127")
    notes = result["notes"]
    if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
        raise _malformed("result.notes", "must be a list of strings")
    for key in ("reject", "detail"):
        if key in result and not isinstance(result[key], str):
            raise _malformed(f"result.{key}", "must be a string")


def check_result(kind: str, result: Any) -> dict[str, Any]:
    """``result`` if it has the contract's shape. Unknown keys are refused so that a misspelt
    ``reject`` cannot silently turn a refusal into an approval."""
    if not isinstance(result, dict):
        raise _malformed("result", f"must be an object, got {result!r}")
    required, optional = _RESULT_KEYS[kind]
    if missing := required - result.keys():
        raise _malformed("result", f"missing {sorted(missing)}")
    if unknown := result.keys() - required - optional:
        raise _malformed("result", f"unknown keys {sorted(unknown)}")
    if kind == ATTESTATION:
        _check_attestation(result)
    elif not isinstance(result["allow"], bool) or not isinstance(result["reason"], str):
        raise _malformed("result", "allow must be a boolean and reason a string")
    return result


@dataclass(frozen=True)
class CompiledPolicy:
    id: str  # e.g. "attestation.snp" or "resource"
    kind: str  # "attestation" | "resource"
    rego: str
    digest: str  # sha256 hex of the UTF-8 source: the policy's version
    revision: int  # the store's revision the source came from (informational)
    _program: Program = field(kw_only=True, repr=False, compare=False)
    _paths: InputPaths | None = field(kw_only=True, repr=False, compare=False)

    def evaluate(self, input: Mapping[str, Any]) -> dict[str, Any]:
        """The policy's ``result`` for ``input``; ``PolicyError`` when it gives none or a malformed one."""
        if missing := REQUIRED_INPUT[self.kind] - input.keys():
            raise _malformed("input", f"missing {sorted(missing)}")
        value = self._program.run(prune(input, self._paths))
        if value is UNDEFINED:
            raise _malformed("result", "undefined for this input")
        return check_result(self.kind, value)


def compile_policy(policy_id: str, kind: str, rego: str, revision: int = 0) -> CompiledPolicy:
    """Compile and vet one policy version (see the module docstring); ``PolicyError`` if unusable."""
    if kind not in KINDS:
        raise PolicyError("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    if not policy_id:
        raise PolicyError("id", "a policy needs an id")
    code = strip_comments(rego)
    package = _PACKAGE_LINE.search(code)
    if package is None or package.group(1) != PACKAGES[kind]:
        found = package.group(1) if package else "none"
        raise PolicyError("package", f"must be `package {PACKAGES[kind]}` (found {found})")
    program = Program(rego, _ENTRYPOINTS[kind])
    paths = input_paths(rego)
    try:
        probed = program.run(prune(_probe(kind, policy_id), paths))
        if probed is not UNDEFINED:
            check_result(kind, probed)
    except PolicyError as err:
        # Failing on an input where nothing happened makes the policy unusable: invalid, not a
        # per-request evaluation failure.
        raise PolicyError(err.field, f"on a neutral input: {err.detail}") from None
    if probed is UNDEFINED:
        if _RESULT_RULE.search(code) is None:
            raise PolicyError("result", "the policy has no `result` rule")
        raise PolicyError(
            "result", "`result` is undefined for a neutral input: give it an `else` or a `default`"
        )
    digest = hashlib.sha256(rego.encode()).hexdigest()
    return CompiledPolicy(policy_id, kind, rego, digest, revision, _program=program, _paths=paths)


class PolicyCache:
    """Compiled policies keyed by (id, kind, digest): each version is compiled once, whatever the
    number of callers or revisions carrying the same text. Bounded; least recently used goes first.
    A version that failed to compile is remembered too, so a broken policy costs one compilation."""

    def __init__(self, max_entries: int = 64) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str, str], CompiledPolicy | PolicyError] = OrderedDict()
        # Compiling takes milliseconds and happens once per version: holding the lock through it
        # is what makes "once" hold when two threads ask at the same time.
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str, int], CompiledPolicy] = {}
        self.compilations = 0

    def get_or_compile(self, policy_id: str, kind: str, rego: str, revision: int = 0) -> CompiledPolicy:
        # Per request the same stored revision comes back: find it without hashing its text.
        known = self._latest.get((policy_id, kind, revision))
        if known is not None and (known.rego is rego or known.rego == rego):
            return known
        key = (policy_id, kind, hashlib.sha256(rego.encode()).hexdigest())
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.compilations += 1
                try:
                    entry = compile_policy(policy_id, kind, rego, revision)
                except PolicyError as err:
                    entry = err
                self._entries[key] = entry
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            self._entries.move_to_end(key)
            if isinstance(entry, PolicyError):
                # A fresh exception each time: re-raising one instance would keep growing its traceback.
                raise PolicyError(entry.field, entry.detail, reason=entry.reason)
            if entry.revision != revision:
                entry = self._entries[key] = replace(entry, revision=revision)
            if len(self._latest) >= self._max:
                self._latest.clear()
            self._latest[(policy_id, kind, revision)] = entry
            return entry


@functools.cache
def default_policy_source(policy_id: str) -> str:
    """The text of the packaged default for ``policy_id`` (``attestation.<tee>`` or ``resource``)."""
    name = _DEFAULT_FILES.get(policy_id)
    if name is None:
        raise PolicyError("id", f"no default policy {policy_id!r} (known: {', '.join(_DEFAULT_FILES)})")
    return resources.files("shared.policy.defaults").joinpath(name).read_text(encoding="utf-8")


_DEFAULTS = PolicyCache(max_entries=len(_DEFAULT_FILES))


def default_policy(policy_id: str) -> CompiledPolicy:
    """The packaged default, compiled once per process."""
    return _DEFAULTS.get_or_compile(policy_id, kind_of(policy_id), default_policy_source(policy_id))
