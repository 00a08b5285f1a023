"""Deterministic simulated fleets for `remits bench`: devices, guests and their vendors' material.

Every device is a pure function of ``(tee, seed, index)``, so the vendor process and any number of
client processes agree on the whole fleet without sharing state: a device's key is
``sha512("remits-bench|<tee>|<label>|<seed>|<index>")`` reduced to a scalar, its identity (sample
device id, SNP chip id, TDX PPID) is a hash of the same inputs followed by the big-endian index, so
a vendor recovers the index from the identity alone and refuses identities of any other fleet.

What cannot be derived -- the vendors' own keys and the endorsements they sign (RSA-4096 for AMD:
about 10 ms each) -- is issued once and kept in a cache directory, keyed by TEE and seed:

    <cache>/<tee>/<sha256(seed)[:16]>/vendor/...        the simulated vendor's keys and certificates
    <cache>/<tee>/<sha256(seed)[:16]>/certs-F-L.bin     issued endorsements (DER) of devices F..L

Clients sign evidence per attestation (it binds the server's nonce). Real TEEs sign in hardware at
no cost to the host, while here every microsecond of client CPU is taken from the server under
test, so signing uses ECDSA with a fixed nonce per device (``FixedNonceSigner``): the signature is
an ordinary valid ECDSA signature, the server verifies it exactly as any other, and the nonce reuse
leaks nothing that is not public already (the device keys derive from the seed).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.demo.client import KBS_VERSION, p256_jwk
from services.demo.fleet import DEMO_IMAGE_MEASUREMENT
from services.demo.snp_sim import SimulatedAmd, SimulatedSnpGuest, Tcb
from services.demo.tdx_sim import (
    DEFAULT_FMSPC,
    LATEST_TCB,
    SimulatedIntel,
    SimulatedTdxPlatform,
)
from shared.kbs.binding import expected_report_data
from shared.platforms.sample.abi import DEVICE_ID_SIZE
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI

TEES = ("sample", "snp", "tdx")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "remits" / "bench"

SNP_PRODUCT = "Milan"
SNP_TCB = Tcb(bootloader=4, tee=0, snp=27, microcode=222)
SNP_CHIP_ID_SIZE = 64
TDX_FMSPC = DEFAULT_FMSPC  # one platform model for the whole fleet: collateral is per FMSPC
TDX_PPID_SIZE = 16
MEASUREMENT = DEMO_IMAGE_MEASUREMENT  # what the demo provisions as the approved image
# Endorsements outlive any benchmark campaign, so a warm cache never serves expired ones.
SAMPLE_CERT_DAYS = 3650

_INDEX_SIZE = 8
_MAX_INDEX = 2**63 - 1


# -- curves and derivation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """The numbers fixed-nonce signing needs; ``cryptography`` does not expose them."""

    curve: ec.EllipticCurve
    p: int  # field prime
    n: int  # group order
    size: int  # bytes per coordinate
    digest: Callable[[bytes], Any]  # the hash whose bit length equals the order's


P256 = Curve(
    ec.SECP256R1(),
    p=2**256 - 2**224 + 2**192 + 2**96 - 1,
    n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    size=32,
    digest=hashlib.sha256,
)
P384 = Curve(
    ec.SECP384R1(),
    p=2**384 - 2**128 - 2**96 + 2**32 - 1,
    n=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    size=48,
    digest=hashlib.sha384,
)
DEVICE_CURVE = {"sample": P384, "snp": P384, "tdx": P256}


def _check_index(index: int) -> None:
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"device index {index} out of range")


def derive_bytes(tee: str, label: str, seed: str, index: int) -> bytes:
    """64 bytes that only ``(tee, label, seed, index)`` determine; separators keep inputs apart."""
    _check_index(index)
    material = b"|".join(
        (b"remits-bench", tee.encode(), label.encode(), seed.encode(), index.to_bytes(_INDEX_SIZE, "big"))
    )
    return hashlib.sha512(material).digest()


def derive_scalar(tee: str, label: str, seed: str, index: int, curve: Curve) -> int:
    return int.from_bytes(derive_bytes(tee, label, seed, index), "big") % (curve.n - 1) + 1


def derive_key(tee: str, label: str, seed: str, index: int, curve: Curve) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(derive_scalar(tee, label, seed, index, curve), curve.curve)


def device_key(tee: str, seed: str, index: int) -> ec.EllipticCurvePrivateKey:
    """The key the vendor certifies: sample device key, SNP VCEK (P-384), TDX PCK key (P-256)."""
    return derive_key(tee, "device", seed, index, DEVICE_CURVE[tee])


def tee_key(tee: str, seed: str, index: int) -> ec.EllipticCurvePrivateKey:
    """The guest's P-256 key that released secrets are wrapped to (KBS ``tee-pubkey``)."""
    return derive_key(tee, "tee-key", seed, index, P256)


def identity(tee: str, seed: str, index: int, size: int) -> bytes:
    """A hash of the fleet and index followed by the big-endian index (``size`` bytes in all)."""
    return derive_bytes(tee, "id", seed, index)[: size - _INDEX_SIZE] + index.to_bytes(_INDEX_SIZE, "big")


def index_of(tee: str, seed: str, ident: bytes, size: int) -> int | None:
    """The index of the fleet device with this identity, or None for any other identity."""
    if len(ident) != size:
        return None
    index = int.from_bytes(ident[-_INDEX_SIZE:], "big")
    if index > _MAX_INDEX or identity(tee, seed, index, size) != ident:
        return None
    return index


def sample_device_id(seed: str, index: int) -> bytes:
    return identity("sample", seed, index, DEVICE_ID_SIZE)


def snp_chip_id(seed: str, index: int) -> bytes:
    return identity("snp", seed, index, SNP_CHIP_ID_SIZE)


def tdx_ppid(seed: str, index: int) -> bytes:
    return identity("tdx", seed, index, TDX_PPID_SIZE)


# -- fast ECDSA ---------------------------------------------------------------------------------


def _affine_add(curve: Curve, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """a + b for distinct points, neither the inverse of the other (never met: see callers)."""
    p = curve.p
    slope = (b[1] - a[1]) * pow(b[0] - a[0], -1, p) % p
    x = (slope * slope - a[0] - b[0]) % p
    return x, (slope * (a[0] - x) - a[1]) % p


def _point(curve: Curve, scalar: int) -> tuple[int, int]:
    numbers = ec.derive_private_key(scalar, curve.curve).public_key().public_numbers()
    return numbers.x, numbers.y


@dataclass(frozen=True, slots=True)
class FixedNonceSigner:
    """ECDSA with one nonce k per device: s = k⁻¹(e + r·d) costs two big-integer products instead
    of a scalar multiplication (P-384 signing drops from ~400 µs to ~3 µs). Only sound because the
    device keys are public anyway; a verifier cannot tell, and does the same work."""

    curve: Curve
    r: int
    k_inv: int
    rd: int  # r·d mod n, the part of s that does not depend on the message

    def sign(self, message: bytes) -> tuple[int, int]:
        # Hash and order have the same bit length (SHA-256/P-256, SHA-384/P-384): no truncation.
        e = int.from_bytes(self.curve.digest(message).digest(), "big")
        return self.r, self.k_inv * (e + self.rd) % self.curve.n


def signing_key_label(tee: str) -> str:
    """Which derived key signs evidence: the device key, except on TDX where the quoting
    enclave's attestation key signs quotes (the PCK only certifies that key)."""
    return "attestation-key" if tee == "tdx" else "device"


def fixed_nonce_signers(tee: str, seed: str, first: int, count: int) -> list[FixedNonceSigner]:
    """Evidence signers for devices first..first+count-1. Nonces are k_i = K + i, so the points
    k_i·G follow by one point addition each (~10 µs) instead of a scalar multiplication (~700 µs
    on P-384): a client sets up thousands of devices in well under a second."""
    curve = DEVICE_CURVE[tee]
    label = signing_key_label(tee)
    base = derive_scalar(tee, "ecdsa-nonce", seed, 0, curve)
    generator = _point(curve, 1)
    signers: list[FixedNonceSigner] = []
    point: tuple[int, int] | None = None
    for index in range(first, first + count):
        k = (base + index) % curve.n
        point = _point(curve, k) if point is None else _affine_add(curve, point, generator)
        r = point[0] % curve.n
        d = derive_scalar(tee, label, seed, index, curve)
        signers.append(FixedNonceSigner(curve, r, pow(k, -1, curve.n), r * d % curve.n))
    return signers


# -- guests (client side) -----------------------------------------------------------------------

# Characters for which RFC 8785 and plain string concatenation agree (no escaping needed).
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9+/=_.~-]*")


class Attester(Protocol):
    def evidence(self, report_data: bytes) -> bytes:
        """The KBS ``primary_evidence`` JSON binding ``report_data`` (64 bytes)."""
        ...


@dataclass(slots=True)
class Guest:
    """One simulated guest on one device: what it sends in the KBS flow, mostly precomputed."""

    tee: str
    index: int
    tee_key: ec.EllipticCurvePrivateKey
    tee_jwk: dict[str, str]
    attester: Attester
    auth_body: bytes
    _binding_head: bytes
    _binding_tail: bytes
    _attest_tail: bytes

    @classmethod
    def create(cls, tee: str, index: int, key: ec.EllipticCurvePrivateKey, attester: Attester) -> Guest:
        jwk = p256_jwk(key)
        jwk_json = json.dumps(jwk, separators=(",", ":")).encode()
        return cls(
            tee=tee,
            index=index,
            tee_key=key,
            tee_jwk=jwk,
            attester=attester,
            auth_body=json.dumps(
                {"version": KBS_VERSION, "tee": tee, "extra-params": {}}, separators=(",", ":")
            ).encode(),
            # RFC 8785 sorts members: additional-evidence, nonce, tee-pubkey.
            _binding_head=b'{"additional-evidence":"","nonce":"',
            _binding_tail=b'","tee-pubkey":' + rfc8785.dumps(jwk) + b"}",
            _attest_tail=b'","tee-pubkey":' + jwk_json + b'},"tee-evidence":{"primary_evidence":',
        )

    def report_data(self, nonce: str) -> bytes:
        """``expected_report_data(nonce, tee_pubkey)``, without re-serialising the key each time."""
        if _PLAIN_TEXT.fullmatch(nonce) is None:
            return expected_report_data(nonce, self.tee_jwk)
        return self._plain_report_data(nonce.encode())

    def _plain_report_data(self, nonce: bytes) -> bytes:
        return hashlib.sha384(self._binding_head + nonce + self._binding_tail).digest() + bytes(16)

    def attest_body(self, nonce: str) -> bytes:
        """The ``POST /kbs/v0/attest`` body, with fresh evidence bound to ``nonce``."""
        if _PLAIN_TEXT.fullmatch(nonce) is None:  # never from REMITS (base64), but stay correct
            report_data, quoted = expected_report_data(nonce, self.tee_jwk), json.dumps(nonce).encode()[1:-1]
        else:
            quoted = nonce.encode()
            report_data = self._plain_report_data(quoted)
        evidence = self.attester.evidence(report_data)
        return b"".join(
            (
                b'{"runtime-data":{"nonce":"',
                quoted,
                self._attest_tail,
                evidence,
                b',"additional_evidence":""}}',
            )
        )


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class SampleAttester:
    """The sample TEE's report (``SimulatedDevice.make_report`` layout) with a fast signature."""

    __slots__ = ("_head", "_signer", "_tail")
    _REPORT_DATA = slice(0x050, 0x090)
    _DEVICE_ID = slice(0x008, 0x018)

    def __init__(self, template: bytes, device_id: bytes, signer: FixedNonceSigner) -> None:
        region = bytearray(template[:0x0B0])
        region[self._DEVICE_ID] = device_id
        self._head = bytes(region[: self._REPORT_DATA.start])
        self._tail = bytes(region[self._REPORT_DATA.stop :])
        self._signer = signer

    @staticmethod
    def template() -> bytes:
        """One real report (any key, device id zero) to patch per device: same bytes as the simulator's."""
        device = SimulatedDevice(
            bytes(DEVICE_ID_SIZE), ec.generate_private_key(P384.curve), MEASUREMENT, svn=1, flags=0
        )
        return device.make_report(bytes(64))

    def report(self, report_data: bytes) -> bytes:
        region = self._head + report_data + self._tail
        r, s = self._signer.sign(region)
        return region + r.to_bytes(48, "big") + s.to_bytes(48, "big")

    def evidence(self, report_data: bytes) -> bytes:
        return b'{"report":"' + _b64(self.report(report_data)) + b'"}'


class SnpAttester:
    """An SEV-SNP ATTESTATION_REPORT (``SimulatedSnpGuest.make_report`` layout), fast-signed."""

    __slots__ = ("_head", "_middle", "_signed_tail", "_signer", "_unsigned_tail")

    def __init__(self, template: bytes, chip_id: bytes, signer: FixedNonceSigner) -> None:
        report = bytearray(template)
        report[0x1A0:0x1E0] = chip_id
        self._head = bytes(report[:0x050])  # ..report_data
        self._middle = bytes(report[0x090:0x140])  # measurement..report_id
        self._signed_tail = bytes(report[0x160:0x2A0])  # report_id_ma..end of the signed region
        self._unsigned_tail = bytes(report[0x330:])
        self._signer = signer

    @staticmethod
    def template() -> bytes:
        guest = SimulatedSnpGuest(
            SNP_PRODUCT, bytes(64), ec.generate_private_key(P384.curve), SNP_TCB, MEASUREMENT
        )
        return guest.make_report(bytes(64))

    def report(self, report_data: bytes) -> bytes:
        # REPORT_ID is random per report, as in the simulator.
        signed = b"".join((self._head, report_data, self._middle, os.urandom(32), self._signed_tail))
        r, s = self._signer.sign(signed)
        return signed + r.to_bytes(72, "little") + s.to_bytes(72, "little") + self._unsigned_tail

    def evidence(self, report_data: bytes) -> bytes:
        return b'{"report":"' + _b64(self.report(report_data)) + b'"}'


_TDX_HEADER = 48
_TDX_BODY = 584  # a v4 (TD 1.0) quote body; REPORTDATA is its last 64 bytes


class TdxAttester:
    """A DCAP v4 quote from ``SimulatedTdxPlatform.make_quote``: only REPORTDATA and the attestation
    key's signature over header and body change per quote; the QE certification data is fixed."""

    __slots__ = ("_head", "_length", "_rest", "_signer")
    _REPORT_DATA = _TDX_HEADER + _TDX_BODY - 64
    _SIGNED = _TDX_HEADER + _TDX_BODY

    def __init__(self, template: bytes, signer: FixedNonceSigner) -> None:
        self._head = template[: self._REPORT_DATA]
        self._length = template[self._SIGNED : self._SIGNED + 4]
        self._rest = template[self._SIGNED + 4 + 64 :]  # attestation key, certification data
        self._signer = signer

    def quote(self, report_data: bytes) -> bytes:
        signed = self._head + report_data
        r, s = self._signer.sign(signed)
        return b"".join((signed, self._length, r.to_bytes(32, "big"), s.to_bytes(32, "big"), self._rest))

    def evidence(self, report_data: bytes) -> bytes:
        return b'{"cc_eventlog":null,"quote":"' + _b64(self.quote(report_data)) + b'"}'


@dataclass(frozen=True)
class _IntelCertificates:
    """What a platform reads of its vendor: the CA certificates of its PCK chain, no keys."""

    pck_ca: x509.Certificate
    root: x509.Certificate


def tdx_platform(seed: str, index: int, pck_der: bytes, intel: _IntelCertificates) -> SimulatedTdxPlatform:
    """Device ``index`` of the TDX fleet as the simulator's platform, around its pre-issued PCK."""
    user_data = derive_bytes("tdx", "qe-key-id", seed, index)[:16] + bytes(4)
    return SimulatedTdxPlatform(
        intel=cast(SimulatedIntel, intel),  # only pck_chain_pem reads it, for the certificates
        fmspc=TDX_FMSPC,
        tcb=LATEST_TCB,
        pck_key=device_key("tdx", seed, index),
        pck_cert=x509.load_der_x509_certificate(pck_der),
        attestation_key=derive_key("tdx", signing_key_label("tdx"), seed, index, P256),
        header_user_data=user_data,
    )


def tdx_template(platform: SimulatedTdxPlatform) -> bytes:
    return platform.make_quote(bytes(64), mr_td=MEASUREMENT, rtmrs=[bytes(48)] * 4)


def build_guests(tee: str, seed: str, first: int, count: int, cache_dir: Path | None = None) -> list[Guest]:
    """Guests on devices first..first+count-1 (TDX needs the PCKs the vendor issued into the cache)."""
    signers = fixed_nonce_signers(tee, seed, first, count)
    indices = range(first, first + count)
    attesters: list[Attester]
    if tee == "sample":
        template = SampleAttester.template()
        attesters = [
            SampleAttester(template, sample_device_id(seed, i), s)
            for i, s in zip(indices, signers, strict=True)
        ]
    elif tee == "snp":
        template = SnpAttester.template()
        attesters = [
            SnpAttester(template, snp_chip_id(seed, i), s) for i, s in zip(indices, signers, strict=True)
        ]
    elif tee == "tdx":
        store = EndorsementCache(cache_dir or DEFAULT_CACHE_DIR, tee, seed)
        pcks = store.read(first, count)
        missing = [i for i in indices if i not in pcks]
        if missing:
            raise LookupError(
                f"no PCK certificate issued for TDX device {missing[0]} of seed {seed!r} in {store.root}"
            )
        intel = store.tdx_certificates()
        attesters = [
            TdxAttester(tdx_template(tdx_platform(seed, i, pcks[i], intel)), s)
            for i, s in zip(indices, signers, strict=True)
        ]
    else:
        raise ValueError(f"unknown TEE {tee!r}")
    return [Guest.create(tee, i, tee_key(tee, seed, i), a) for i, a in zip(indices, attesters, strict=True)]


# -- vendors --------------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_key(pem: bytes) -> Any:
    # Our own cached keys: skipping RSA's consistency check saves ~0.4 s per RSA-4096 key.
    return serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)


def _load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


class Vendor(Protocol):
    """A simulated vendor of one TEE: its keys as files, and issuing one device's endorsement."""

    tee: str

    def files(self) -> dict[str, bytes]: ...

    def issue(self, seed: str, index: int, now: datetime) -> bytes: ...


@dataclass
class SampleVendor:
    pki: VendorPKI
    tee: str = "sample"

    @classmethod
    def generate(cls, now: datetime) -> SampleVendor:
        return cls(VendorPKI.generate(now))

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> SampleVendor:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            return cls(VendorPKI.load(tmp))

    def files(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as tmp:
            self.pki.save(tmp)  # the format the server loads from <data dir>/sample-pki
            return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}

    def issue(self, seed: str, index: int, now: datetime) -> bytes:
        public_key = device_key("sample", seed, index).public_key()
        return self.pki.issue_device_cert(
            sample_device_id(seed, index), public_key, now, validity_days=SAMPLE_CERT_DAYS
        )


@dataclass
class SnpVendor:
    amd: SimulatedAmd
    tee: str = "snp"

    @classmethod
    def generate(cls, now: datetime) -> SnpVendor:
        return cls(SimulatedAmd.generate(SNP_PRODUCT, now))

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> SnpVendor:
        amd = SimulatedAmd(
            SNP_PRODUCT, _load_key(files["ark.key"]), _load_cert(files["ark.pem"]),
            _load_key(files["ask.key"]), _load_cert(files["ask.pem"]),
        )  # fmt: skip
        return cls(amd)

    def files(self) -> dict[str, bytes]:
        amd = self.amd
        return {
            "ark.key": _key_pem(amd.ark_key),
            "ark.pem": _cert_pem(amd.ark),
            "ask.key": _key_pem(amd.ask_key),
            "ask.pem": _cert_pem(amd.ask),
        }

    def issue(self, seed: str, index: int, now: datetime) -> bytes:
        public_key = device_key("snp", seed, index).public_key()
        return self.amd.issue_vcek(snp_chip_id(seed, index), SNP_TCB, public_key, now)


_INTEL_PARTS = ("root", "pck_ca", "tcb_signing")


@dataclass
class TdxVendor:
    intel: SimulatedIntel
    tee: str = "tdx"

    @classmethod
    def generate(cls, now: datetime) -> TdxVendor:
        return cls(SimulatedIntel.generate(now))

    @classmethod
    def from_files(cls, files: dict[str, bytes], now: datetime | None = None) -> TdxVendor:
        # ``now`` dates the PCS documents rendered from a cached vendor: always the current time,
        # so collateral from a warm cache is as fresh as from a new vendor.
        parts: dict[str, Any] = {}
        for part in _INTEL_PARTS:
            parts[f"{part}_key"] = _load_key(files[f"{part}.key"])
            parts[part] = _load_cert(files[f"{part}.pem"])
        moment = (now or datetime.now(UTC)).replace(microsecond=0)
        return cls(SimulatedIntel(now=moment, **parts))

    def files(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for part in _INTEL_PARTS:
            out[f"{part}.key"] = _key_pem(getattr(self.intel, f"{part}_key"))
            out[f"{part}.pem"] = _cert_pem(getattr(self.intel, part))
        return out

    def issue(self, seed: str, index: int, now: datetime) -> bytes:
        cert = self.intel.issue_pck(
            TDX_FMSPC,
            device_key("tdx", seed, index).public_key(),
            sgx_components=LATEST_TCB.sgx_components,
            pce_svn=LATEST_TCB.pce_svn,
            ppid=tdx_ppid(seed, index),
            platform_instance_id=derive_bytes("tdx", "platform-instance", seed, index)[:16],
        )
        return cert.public_bytes(serialization.Encoding.DER)


_VENDORS: dict[str, Any] = {"sample": SampleVendor, "snp": SnpVendor, "tdx": TdxVendor}


def vendor_from_files(tee: str, files: dict[str, bytes]) -> Vendor:
    return cast(Vendor, _VENDORS[tee].from_files(files))


def generate_vendor(tee: str, now: datetime) -> Vendor:
    return cast(Vendor, _VENDORS[tee].generate(now))


# -- the cache ------------------------------------------------------------------------------------

_CHUNK_MAGIC = b"RMBC1\n"
_RECORD = struct.Struct(">QI")  # index, DER length
_CHUNK_RE = re.compile(r"certs-(\d+)-(\d+)\.bin")
_CHUNK_SIZE = 2048  # certificates per file: an interrupted pre-issue keeps what it finished


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _encode_chunk(certs: dict[int, bytes]) -> bytes:
    parts = [_CHUNK_MAGIC]
    for index in sorted(certs):
        parts += (_RECORD.pack(index, len(certs[index])), certs[index])
    return b"".join(parts)


def _decode_chunk(data: bytes, wanted: range) -> Iterator[tuple[int, bytes]]:
    if not data.startswith(_CHUNK_MAGIC):
        raise ValueError("not a bench certificate chunk")
    offset = len(_CHUNK_MAGIC)
    while offset < len(data):
        index, size = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        if index in wanted:
            yield index, data[offset : offset + size]
        offset += size


class EndorsementCache:
    """One TEE's and seed's vendor and issued endorsements on disk (see the module docstring)."""

    def __init__(self, cache_dir: Path, tee: str, seed: str) -> None:
        if tee not in TEES:
            raise ValueError(f"unknown TEE {tee!r}")
        self.tee = tee
        self.seed = seed
        self.root = Path(cache_dir) / tee / hashlib.sha256(seed.encode()).hexdigest()[:16]

    @property
    def vendor_dir(self) -> Path:
        return self.root / "vendor"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive for issuing: two vendors on one cache never issue the same devices twice."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def vendor_files(self) -> dict[str, bytes] | None:
        if not self.vendor_dir.is_dir():
            return None
        return {p.name: p.read_bytes() for p in self.vendor_dir.iterdir() if p.is_file()}

    def save_vendor(self, vendor: Vendor) -> None:
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".vendor-"))
        for name, data in vendor.files().items():
            (staging / name).write_bytes(data)
            if name.endswith(".key"):
                os.chmod(staging / name, 0o600)
        (self.root / "seed.txt").write_text(self.seed + "\n")
        os.replace(staging, self.vendor_dir)

    def _chunks(self, wanted: range) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            match = _CHUNK_RE.fullmatch(path.name)
            if match and int(match.group(1)) < wanted.stop and int(match.group(2)) >= wanted.start:
                yield path

    def read(self, first: int, count: int) -> dict[int, bytes]:
        """Issued endorsements (DER) of the devices first..first+count-1 that are in the cache."""
        wanted = range(first, first + count)
        out: dict[int, bytes] = {}
        for path in self._chunks(wanted):
            out.update(_decode_chunk(path.read_bytes(), wanted))
        return out

    def write(self, certs: dict[int, bytes]) -> None:
        if certs:
            name = f"certs-{min(certs)}-{max(certs)}.bin"
            _write_atomic(self.root / name, _encode_chunk(certs))

    def tdx_certificates(self) -> _IntelCertificates:
        """The PCK chain's CA certificates (public files only: clients never read vendor keys)."""
        return _IntelCertificates(
            pck_ca=_load_cert((self.vendor_dir / "pck_ca.pem").read_bytes()),
            root=_load_cert((self.vendor_dir / "root.pem").read_bytes()),
        )


# -- pre-issuing ----------------------------------------------------------------------------------

_worker: tuple[Vendor, str, datetime] | None = None


def _init_worker(tee: str, files: dict[str, bytes], seed: str, now: datetime) -> None:
    global _worker
    _worker = (vendor_from_files(tee, files), seed, now)


def _issue_batch(indices: list[int]) -> list[bytes]:
    assert _worker is not None, "worker not initialised"
    vendor, seed, now = _worker
    return [vendor.issue(seed, i, now) for i in indices]


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is cheapest, and safe while this process has no other thread; otherwise spawn.
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@dataclass
class Issued:
    """The outcome of pre-issuing: the vendor and every device's endorsement (index -> DER)."""

    vendor: Vendor
    certs: dict[int, bytes]
    issued: int  # how many were new (0: all from the cache)
    seconds: float


def _issue_missing(
    cache: EndorsementCache,
    vendor: Vendor,
    missing: list[int],
    workers: int,
    log: Callable[[str], None],
) -> dict[int, bytes]:
    now = datetime.now(UTC)
    # RSA-4096 (SNP) costs ~10 ms per certificate, ECDSA under 1 ms: batches of similar duration.
    batches = _batches(missing, 16 if cache.tee == "snp" else 128)
    issued: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    started = last_log = time.monotonic()

    def collect(batch: list[int], ders: list[bytes]) -> None:
        nonlocal last_log
        pending.update(zip(batch, ders, strict=True))
        if len(pending) >= _CHUNK_SIZE:
            cache.write(pending)
            issued.update(pending)
            pending.clear()
        if time.monotonic() - last_log > 2.0:
            last_log = time.monotonic()
            done = len(issued) + len(pending)
            log(f"{cache.tee}: issued {done}/{len(missing)} ({done / (last_log - started):.0f}/s)")

    if workers <= 1 or len(batches) <= 1:
        for batch in batches:
            collect(batch, [vendor.issue(cache.seed, i, now) for i in batch])
    else:
        args = (cache.tee, vendor.files(), cache.seed, now)
        with ProcessPoolExecutor(
            workers, mp_context=_pool_context(), initializer=_init_worker, initargs=args
        ) as pool:
            for batch, ders in zip(batches, pool.map(_issue_batch, batches), strict=True):
                collect(batch, ders)
    cache.write(pending)
    issued.update(pending)
    return issued


def preissue(
    tee: str,
    seed: str,
    fleet: int,
    cache_dir: Path,
    *,
    workers: int | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Issued:
    """The vendor of ``tee`` for ``seed`` and endorsements of devices 0..fleet-1: from the cache,
    issuing (in ``workers`` processes) and caching whatever is missing."""
    started = time.monotonic()
    cache = EndorsementCache(cache_dir, tee, seed)
    with cache.locked():
        files = cache.vendor_files()
        if files is None:
            log(f"{tee}: generating the simulated vendor")
            vendor = generate_vendor(tee, datetime.now(UTC))
            cache.save_vendor(vendor)
        else:
            vendor = vendor_from_files(tee, files)
        certs = cache.read(0, fleet)
        missing = [i for i in range(fleet) if i not in certs]
        if missing:
            log(f"{tee}: issuing {len(missing)} endorsements ({len(certs)} cached)")
            certs.update(_issue_missing(cache, vendor, missing, workers or os.cpu_count() or 1, log))
    return Issued(vendor, certs, len(missing), time.monotonic() - started)


def interleave(groups: Iterable[list[Guest]]) -> list[Guest]:
    """sample, snp, tdx, sample, ... : the order a mixed client attests in."""
    lists = list(groups)
    return [g for row in zip(*lists, strict=True) for g in row]
