"""The JSON that a libkrun-style VMM and a SEV key broker exchange (kbs-types ``SevRequest``,
``SevChallenge``; the ``sev`` crate's ``Start``, ``Session``, ``Policy``, ``Measurement`` and
``Secret``), as values: decoded strictly, encoded the way those clients read them.

What the clients send and expect:

- ``POST /kbs/v0/auth``: ``{"version": "0.0.0", "tee": "sev", "extra-params": SevRequest}``; older
  clients send ``extra-params`` as a *string* holding the JSON, newer ones as an object (both are
  read; the test vector of kbs-types also repeats ``workload_id`` at the top level).
  ``SevRequest = {"workload_id", "build": {"version": {"major", "minor"}, "build"},
  "chain": {"ca": {"ark", "ask"}, "sev": {"pdh", "pek", "oca", "cek"}}}``, every certificate a JSON
  array of byte values in AMD's binary format.
- the challenge: ``{"nonce": <session id>, "extra-params": SevChallenge}`` with
  ``SevChallenge = {"id", "start": {"policy": {"flags": {"bits"}, "minfw": {"major", "minor"}},
  "cert": [2084 bytes], "session": {"nonce", "wrap_tk", "wrap_iv", "wrap_mac", "policy_mac"}}}``;
  it is sent as a JSON string in ``extra-params``, which is what the reference clients decode.
- ``POST /kbs/v0/attest``: ``{"tee-pubkey": ..., "tee-evidence": "<JSON of {"measure": [32],
  "mnonce": [16]}>"}``.
- the secret: ``{"header": {"flags": {"bits"}, "iv": [16], "mac": [32]}, "ciphertext": [...]}``.

Everything here is pure; a malformed body is a ``ParseError`` naming the field (prefix ``sev``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from shared.errors import ParseError

Byte = Annotated[int, msgspec.Meta(ge=0, le=255)]
U8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
MAX_CERT_BYTES = 4096  # a SEV certificate is 2084 bytes, an AMD CA certificate at most 1600
MAX_SECRET_BYTES = 1 << 16

CA_CERTS = ("ark", "ask")
PLATFORM_CERTS = ("pdh", "pek", "oca", "cek")


class Version(msgspec.Struct, forbid_unknown_fields=True):
    major: U8
    minor: U8


class Build(msgspec.Struct, forbid_unknown_fields=True):
    """The firmware's PLATFORM_STATUS: API version and build number (the measurement's inputs)."""

    version: Version
    build: U8


class CaChain(msgspec.Struct, forbid_unknown_fields=True):
    ark: Annotated[list[Byte], msgspec.Meta(max_length=MAX_CERT_BYTES)]
    ask: Annotated[list[Byte], msgspec.Meta(max_length=MAX_CERT_BYTES)]


class PlatformChain(msgspec.Struct, forbid_unknown_fields=True):
    pdh: Annotated[list[Byte], msgspec.Meta(max_length=MAX_CERT_BYTES)]
    pek: Annotated[list[Byte], msgspec.Meta(max_length=MAX_CERT_BYTES)]
    oca: Annotated[list[Byte], msgspec.Meta(max_length=MAX_CERT_BYTES)]
    cek: Annotated[list[Byte], msgspec.Meta(max_length=MAX_CERT_BYTES)]


class Chain(msgspec.Struct, forbid_unknown_fields=True):
    ca: CaChain
    sev: PlatformChain

    def certificates(self) -> dict[str, bytes]:
        """Each certificate's bytes by name (ark, ask, cek, oca, pek, pdh)."""
        return {
            **{name: bytes(getattr(self.ca, name)) for name in CA_CERTS},
            **{name: bytes(getattr(self.sev, name)) for name in PLATFORM_CERTS},
        }


WorkloadId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


ChipId = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-fA-F]{128})?$")]


class SevRequest(msgspec.Struct, forbid_unknown_fields=True):
    workload_id: WorkloadId
    build: Build
    chain: Chain
    # A REMITS extension (kbs-types has no such field): the chip's GET_ID output, hex. With it,
    # the CEK is taken from AMD's KDS for that chip instead of from the host's chain.
    chip_id: ChipId = ""


class PolicyFlags(msgspec.Struct, forbid_unknown_fields=True):
    bits: U16


class WirePolicy(msgspec.Struct, forbid_unknown_fields=True):
    """The guest policy as the ``sev`` crate serialises it: flags (the low 16 bits) and the
    minimum firmware API version (byte 2 major, byte 3 minor)."""

    flags: PolicyFlags
    minfw: Version

    @classmethod
    def from_u32(cls, policy: int) -> WirePolicy:
        return cls(PolicyFlags(policy & 0xFFFF), Version((policy >> 16) & 0xFF, (policy >> 24) & 0xFF))

    def to_u32(self) -> int:
        return self.flags.bits | (self.minfw.major << 16) | (self.minfw.minor << 24)


def _fixed(n: int) -> Any:
    return Annotated[list[Byte], msgspec.Meta(min_length=n, max_length=n)]


class WireSession(msgspec.Struct, forbid_unknown_fields=True):
    nonce: _fixed(16)  # type: ignore[valid-type]
    wrap_tk: _fixed(32)  # type: ignore[valid-type]
    wrap_iv: _fixed(16)  # type: ignore[valid-type]
    wrap_mac: _fixed(32)  # type: ignore[valid-type]
    policy_mac: _fixed(32)  # type: ignore[valid-type]

    @classmethod
    def from_blob(cls, blob: bytes) -> WireSession:
        """From the 128-byte LAUNCH_START session blob (NONCE ‖ WRAP_TK ‖ WRAP_IV ‖ WRAP_MAC ‖
        POLICY_MAC)."""
        if len(blob) != 128:
            raise ParseError("session", f"{len(blob)} bytes, expected 128", prefix="sev")
        return cls(list(blob[:16]), list(blob[16:48]), list(blob[48:64]), list(blob[64:96]), list(blob[96:128]))

    def blob(self) -> bytes:
        return bytes(self.nonce + self.wrap_tk + self.wrap_iv + self.wrap_mac + self.policy_mac)


class Start(msgspec.Struct, forbid_unknown_fields=True):
    policy: WirePolicy
    cert: _fixed(2084)  # type: ignore[valid-type]  # the guest owner's Diffie-Hellman certificate
    session: WireSession


class SevChallenge(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    start: Start


class Measurement(msgspec.Struct, forbid_unknown_fields=True):
    measure: _fixed(32)  # type: ignore[valid-type]
    mnonce: _fixed(16)  # type: ignore[valid-type]


class HeaderFlags(msgspec.Struct, forbid_unknown_fields=True):
    bits: U32


class Header(msgspec.Struct, forbid_unknown_fields=True):
    flags: HeaderFlags
    iv: _fixed(16)  # type: ignore[valid-type]
    mac: _fixed(32)  # type: ignore[valid-type]


class Secret(msgspec.Struct, forbid_unknown_fields=True):
    header: Header
    ciphertext: Annotated[list[Byte], msgspec.Meta(max_length=MAX_SECRET_BYTES)]


def _decode(raw: bytes | str, typ: type[Any], field: str) -> Any:
    try:
        return msgspec.json.decode(raw, type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ParseError(field, f"{typ.__name__}: {exc}", prefix="sev") from exc


def _decode_value(value: Any, typ: type[Any], field: str) -> Any:
    """``value`` as ``typ``: a JSON string (older clients) or the already-parsed object."""
    if isinstance(value, str):
        return _decode(value, typ, field)
    try:
        return msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        raise ParseError(field, f"{typ.__name__}: {exc}", prefix="sev") from exc


def decode_sev_request(extra_params: Any) -> SevRequest:
    """The ``extra-params`` of a SEV ``/auth`` request: an object, or a string holding its JSON."""
    return _decode_value(extra_params, SevRequest, "request")  # type: ignore[no-any-return]


def decode_measurement(tee_evidence: Any) -> tuple[bytes, bytes]:
    """(MEASURE, MNONCE) from an ``/attest`` body's ``tee-evidence`` (a JSON string, or the object)."""
    value = _decode_value(tee_evidence, Measurement, "measurement")
    return bytes(value.measure), bytes(value.mnonce)


def challenge_params(session_id: str, policy: int, godh_cert: bytes, session_blob: bytes) -> str:
    """``extra-params`` of the challenge: the SevChallenge as a JSON string."""
    start = Start(WirePolicy.from_u32(policy), list(godh_cert), WireSession.from_blob(session_blob))
    return msgspec.json.encode(SevChallenge(session_id, start)).decode()


def decode_challenge_params(extra_params: Any) -> SevChallenge:
    """What a VMM reads from the challenge (the demo's client, and tests)."""
    return _decode_value(extra_params, SevChallenge, "challenge")  # type: ignore[no-any-return]


def secret_body(flags: int, iv: bytes, mac: bytes, ciphertext: bytes) -> bytes:
    """The key broker's answer carrying a LAUNCH_SECRET packet."""
    return msgspec.json.encode(Secret(Header(HeaderFlags(flags), list(iv), list(mac)), list(ciphertext)))


def decode_secret(body: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(flags, iv, mac, ciphertext) of a secret answer (the VMM's side)."""
    value = _decode(body, Secret, "secret")
    return value.header.flags.bits, bytes(value.header.iv), bytes(value.header.mac), bytes(value.ciphertext)
