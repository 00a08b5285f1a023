"""The audit trail as a signed hash chain: the pure core of the audit consumer (no NATS here).

Several ``decide`` replicas publish in parallel and could never agree on a previous hash, so the chain is
built by the single audit consumer, in REMITS_DECISIONS stream order. One JSON object per line::

    {"v": 1, "i": n, "kind": "decision"|"admin", "source_seq": s, "event": {...},
     "prev": h, "hash": h, "sig": b64url, "kid": k}
    {"v": 1, "i": n, "kind": "checkpoint", "source_seq": s, "covers": n - 1, "at": t,
     "prev": h, "hash": h, "sig": b64url, "kid": k}

* ``i`` numbers records from 1 with no holes; ``prev`` is the ``hash`` of record ``i - 1`` (64 zeros
  for record 1), so a removed, repeated or reordered line breaks the chain where it happened.
* ``hash`` is the hex SHA-256 of the RFC 8785 form of the record without ``hash`` and ``sig``; the
  verifier re-canonicalises what it parses, so the line's formatting never matters.
* ``sig`` is Ed25519 over the 32 raw bytes of that digest, by the key ``kid`` names (first 16 hex of
  SHA-256 of the raw public key). Signing every record means nobody without the key can edit a record
  and re-chain the rest; it costs tens of microseconds per record.
* ``source_seq`` is the event's sequence in REMITS_DECISIONS: strictly increasing, not consecutive,
  since refused messages are not recorded. A checkpoint repeats the last event's ``source_seq`` (0
  before any event) so that a restart after a clean stop knows where the stream was, and so that an
  auditor can compare the sealed end with the stream.
* A checkpoint seals everything before it (``covers``). Written on a clean stop, it marks the file's end
  as intended; records after the last checkpoint (a running or crashed writer, or a cut-off tail) are
  reported by the verifier as unsealed.

The chain cannot tell what an event means, so it stores whatever it is given, forever, in a file
operators read: callers must never pass secrets (released resources, private keys, bearer
credentials) in ``event``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NoReturn

import msgspec
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import RemitsError
from shared.kbs.wire import b64url_decode, b64url_encode

VERSION: Final = 1
GENESIS: Final = "0" * 64
EVENT_KINDS: Final = frozenset({"decision", "admin"})
CHECKPOINT: Final = "checkpoint"
_COMMON: Final = frozenset({"v", "i", "kind", "source_seq", "prev", "hash", "sig", "kid"})
EVENT_MEMBERS: Final = _COMMON | {"event"}
CHECKPOINT_MEMBERS: Final = _COMMON | {"covers", "at"}
_HEX: Final = frozenset("0123456789abcdef")


class AuditChainError(RemitsError):
    """The chain cannot be continued or extended as asked; ``reason`` says why."""


class AuditTailCorrupt(AuditChainError):
    """The last line of an existing trail cannot be trusted, so nothing may be appended after it."""

    def __init__(self, detail: str) -> None:
        super().__init__("audit.tail_corrupt", detail)


# --- encoding -----------------------------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj``; ``AuditChainError`` for what JSON cannot carry exactly (ints beyond
    2**53, NaN, bytes, non-string keys), since such a value would hash differently once read back."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, RecursionError) as exc:
        raise AuditChainError("audit.unencodable", str(exc) or type(exc).__name__) from exc


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical record without ``hash`` and ``sig``."""
    return hashlib.sha256(
        canonical({k: v for k, v in record.items() if k not in ("hash", "sig")})
    ).hexdigest()


def record_line(record: Mapping[str, Any]) -> bytes:
    """The line to append. Not canonical: readers hash what they parse, and a second JCS pass over the
    event would cost more than the signature."""
    return _line_encoder.encode(record) + b"\n"


_line_encoder = msgspec.json.Encoder()


def parse_line(raw: bytes | str) -> Any:
    """Strict JSON: a member given twice or NaN/Infinity is refused, because readers disagree on what
    such a line means and the hash would have covered only one reading. Raises ``ValueError``."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return json.loads(text, object_pairs_hook=_unique_members, parse_constant=_not_json)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a member appears twice")
    return obj


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def is_int(value: Any) -> bool:
    # JSON true parses as a bool, which Python counts as the int 1.
    return isinstance(value, int) and not isinstance(value, bool)


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` is not something this module writes (members and types), or None."""
    kind = record.get("kind")
    if kind in EVENT_KINDS:
        members, min_source = EVENT_MEMBERS, 1  # JetStream sequences start at 1
    elif kind == CHECKPOINT:
        members, min_source = CHECKPOINT_MEMBERS, 0  # 0: sealed before any event
    else:
        return f"unknown kind {kind!r}"
    if set(record) != members:
        return f"missing or unexpected members {sorted(set(record) ^ members)}"
    if not is_int(record["i"]) or record["i"] < 1:
        return "i is not a positive integer"
    if not is_int(record["source_seq"]) or record["source_seq"] < min_source:
        return "source_seq is not a stream sequence"
    for name in ("prev", "hash"):
        value = record[name]
        if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
            return f"{name} is not a hex SHA-256"
    if not isinstance(record["sig"], str) or not isinstance(record["kid"], str):
        return "sig or kid is not a string"
    if kind == CHECKPOINT:
        at = record["at"]
        if not is_int(record["covers"]) or not (is_int(at) or isinstance(at, float)):
            return "covers or at is not a number"
    elif not isinstance(record["event"], dict):
        return "event is not an object"
    return None


# --- keys ---------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class AuditVerifierKey:
    """A public audit key and its ``kid``."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("audit records are signed with Ed25519")
        self.public_key = public_key
        self.key_id = key_id(public_key)

    @classmethod
    def from_pem(cls, pem: bytes) -> AuditVerifierKey:
        loaded = serialization.load_pem_public_key(pem)
        if not isinstance(loaded, Ed25519PublicKey):
            raise TypeError("not an Ed25519 public key")
        return cls(loaded)

    def verify(self, sig: bytes, data: bytes) -> bool:
        try:
            self.public_key.verify(sig, data)
        except InvalidSignature:
            return False
        return True


class AuditSigner:
    """The audit service's Ed25519 key. Only the audit consumer holds it."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("audit records are signed with Ed25519")
        self._private_key = private_key
        self.verifier = AuditVerifierKey(private_key.public_key())
        self.key_id = self.verifier.key_id

    @classmethod
    def generate(cls) -> AuditSigner:
        """A key held in memory only (tests, tooling)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> AuditSigner:
        """The PKCS#8 PEM key at ``path``, created (0600) if absent; ``<stem>.pub.pem`` beside it (0644)
        is (re)written whenever it does not hold the matching public key, for verifiers to copy."""
        path = Path(path)
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write_new(path, pem, 0o600, replace=False)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise TypeError(f"{path} does not hold an Ed25519 private key")
        signer = cls(loaded)
        pub_path = path.with_name(f"{path.stem}.pub.pem")
        public = signer.public_pem()
        if not pub_path.exists() or pub_path.read_bytes() != public:
            _write_new(pub_path, public, 0o644, replace=True)
        return signer

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def public_pem(self) -> bytes:
        return self.verifier.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _write_new(target: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write via a temp file in the same directory so no reader sees half a file. Without ``replace``
    the temp file is hard-linked into place: of two processes creating a key at once, exactly one key
    wins and both load it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so a private key is never readable by others, not even briefly.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
            return
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass  # another process created it first; use that key
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- the chain ----------------------------------------------------------------------------------


class AuditChain:
    """Builds the next record after (``index``, ``head``). One consumer owns one chain; not thread-safe.

    The state only moves once a record is complete, so an exception leaves the chain unchanged. The
    caller writes each returned record with ``record_line`` before acknowledging its source message."""

    def __init__(self, signer: AuditSigner, head: str = GENESIS, index: int = 0, source_seq: int = 0) -> None:
        self.signer = signer
        self.head = head
        self.index = index
        # Stream sequence of the last event chained: redeliveries at or below it are already on disk.
        self.source_seq = source_seq

    def append(self, event: Mapping[str, Any], source_seq: int, kind: str) -> dict[str, Any]:
        """The signed record for ``event``, the message at ``source_seq`` in REMITS_DECISIONS.

        ``AuditChainError("audit.source_order")`` if ``source_seq`` is not past the last chained one:
        after a crash between write and ack the stream redelivers, and the caller should ack such
        messages without appending them. ``event`` must hold no secrets."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown audit event kind {kind!r}")
        if not isinstance(event, Mapping):
            raise TypeError("an audit event is a JSON object")
        if not is_int(source_seq) or source_seq <= self.source_seq:
            raise AuditChainError(
                "audit.source_order", f"source_seq {source_seq!r} is not after {self.source_seq}"
            )
        # A detached copy of exactly what a reader parses back: later changes to the caller's dict, or
        # tuples where the reader sees lists, must not make the record disagree with its hash.
        event_jcs = canonical(event)
        snapshot = msgspec.json.decode(event_jcs)
        record = self._seal({"kind": kind, "source_seq": source_seq, "event": snapshot}, event_jcs)
        self.source_seq = source_seq
        return record

    def checkpoint(self, at: float) -> dict[str, Any]:
        """A record sealing everything before it; write one on every clean stop."""
        if not (is_int(at) or isinstance(at, float)):
            raise TypeError("checkpoint time must be a number")
        return self._seal({"kind": CHECKPOINT, "source_seq": self.source_seq, "covers": self.index, "at": at})

    def _seal(self, body: dict[str, Any], event_jcs: bytes | None = None) -> dict[str, Any]:
        record = {"v": VERSION, "i": self.index + 1, **body, "prev": self.head, "kid": self.signer.key_id}
        if event_jcs is None:
            digest = record_hash(record)
        else:
            # JCS writes members in key order and "event" sorts before every other member, so the record's
            # canonical form is the event's, already at hand, then the rest: the event is walked only once.
            rest = canonical({k: v for k, v in record.items() if k != "event"})
            digest = hashlib.sha256(b'{"event":' + event_jcs + b"," + rest[1:]).hexdigest()
        record["hash"] = digest
        record["sig"] = b64url_encode(self.signer.sign(bytes.fromhex(digest)))
        self.index, self.head = record["i"], digest
        return record

    @classmethod
    def resume(cls, last_record: Mapping[str, Any] | bytes | str | None, signer: AuditSigner) -> AuditChain:
        """Continue after the last line of an existing trail (None or empty: a new trail).

        The line must be a whole record whose hash matches (and whose signature does, when ``signer``
        made it): appending after a damaged line would leave every later record unverifiable, so that
        raises ``AuditTailCorrupt`` for an operator to look at. A record by another key (after a key
        rotation) is trusted on its hash alone; ``verify_file`` checks it with the old public key."""
        if last_record is None or last_record in (b"", ""):  # an empty file: nothing written yet
            return cls(signer)
        if isinstance(last_record, str):
            last_record = last_record.encode("utf-8")
        if isinstance(last_record, bytes):
            if not last_record.endswith(b"\n"):
                raise AuditTailCorrupt("the last line has no newline: a write was cut short")
            try:
                last_record = parse_line(last_record)
            except (UnicodeDecodeError, ValueError) as exc:
                raise AuditTailCorrupt(f"the last line is not JSON ({exc})") from exc
        if not isinstance(last_record, Mapping):
            raise AuditTailCorrupt("the last line is not a JSON object")
        if last_record.get("v") != VERSION or not is_int(last_record.get("v")):
            raise AuditTailCorrupt(f"the last line has version {last_record.get('v')!r}, not {VERSION}")
        problem = record_problem(last_record)
        if problem:
            raise AuditTailCorrupt(f"the last line is malformed: {problem}")
        try:
            matches = record_hash(last_record) == last_record["hash"]
        except AuditChainError as exc:
            raise AuditTailCorrupt(f"the last line cannot be hashed: {exc.detail}") from exc
        if not matches:
            raise AuditTailCorrupt(f"record {last_record['i']} does not match its hash")
        if last_record["kid"] == signer.key_id and not signature_valid(last_record, signer.verifier):
            raise AuditTailCorrupt(f"record {last_record['i']} has a bad signature")
        return cls(signer, last_record["hash"], last_record["i"], last_record["source_seq"])

    @classmethod
    def resume_file(cls, path: Path, signer: AuditSigner) -> AuditChain:
        """``resume`` from the last line of the trail at ``path`` (a missing file starts a new trail)."""
        try:
            with open(path, "rb") as fh:
                return cls.resume(_last_line(fh), signer)
        except FileNotFoundError:
            return cls(signer)


def signature_valid(record: Mapping[str, Any], key: AuditVerifierKey) -> bool:
    """Whether ``key`` signed the record's stated hash (a malformed ``sig`` is simply invalid)."""
    try:
        return key.verify(b64url_decode(record["sig"]), bytes.fromhex(record["hash"]))
    except (KeyError, TypeError, ValueError):
        return False


def _last_line(fh: Any, chunk: int = 64 * 1024) -> bytes:
    """The file's last line, newline included, read from the end: trails grow without bound."""
    end = fh.seek(0, os.SEEK_END)
    tail = b""
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        fh.seek(pos)
        tail = fh.read(step) + tail
        # The final byte is the last line's own newline; the one before it ends the previous line.
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            return tail[cut + 1 :]
    return tail
