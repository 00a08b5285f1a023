"""A simulated Google Cloud vTPM, for the gcp-vtpm tests and demos.

Everything is in the real formats so that the real verification path runs: a test "EK/AK CA" root
and intermediate (X.509, RSA-2048, SHA-256), an AK certificate shaped like Google's (empty subject,
a critical subjectAltName naming the TPM, the instance-information extension
1.3.6.1.4.1.11129.2.1.21), a software RSA-2048 attestation key signing TPM2_Quotes (RSASSA-SHA256)
over the SHA-1, SHA-256 and SHA-384 PCR banks, a small crypto-agile event log whose replay gives
those PCRs, and the go-tpm-tools ``attest.Attestation`` protobuf, written by a small encoder here.
Only the trust anchor differs: a test root the service must be told to trust explicitly
(``Settings.gcp_ak_roots_path``, a PEM file from ``roots_pem()``).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from shared.kbs.binding import runtime_data_digest
from shared.platforms.gcp.akcert import INSTANCE_INFO_OID
from shared.platforms.tpm.abi import (
    TPM_ALG_RSASSA,
    TPM_ALG_SHA1,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    PcrSelection,
    Signature,
    marshal_attest,
    marshal_public,
    marshal_signature,
    parse_public,
)

BANKS: dict[int, Callable[..., Any]] = {
    TPM_ALG_SHA1: hashlib.sha1,
    TPM_ALG_SHA256: hashlib.sha256,
    TPM_ALG_SHA384: hashlib.sha384,
}
PCR_COUNT = 24
# The DRTM PCRs start at all ones after TPM2_Startup (PC Client Platform TPM Profile).
_DRTM = range(17, 23)

# TCG TPM attributes in the AK certificate's subjectAltName (directoryName), as Google sets them.
_TPM_MANUFACTURER = x509.ObjectIdentifier("2.23.133.2.1")
_TPM_MODEL = x509.ObjectIdentifier("2.23.133.2.2")
_TPM_VERSION = x509.ObjectIdentifier("2.23.133.2.3")

# Event types and GUIDs of the small log (TCG PC Client Platform Firmware Profile).
EV_NO_ACTION = 0x03
EV_SEPARATOR = 0x04
EV_S_CRTM_VERSION = 0x08
EV_IPL = 0x0D
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EFI_GLOBAL_VARIABLE = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")


# ---------------------------------------------------------------------------------------------
# protobuf and DER writers


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def pb_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def pb_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_utf8(text: str) -> bytes:
    return _der(0x0C, text.encode())


@dataclass(frozen=True)
class Instance:
    """The GCE facts the AK certificate states."""

    zone: str = "europe-west4-a"
    project_number: int = 123456789012
    project_id: str = "remits-demo"
    instance_id: int = 6797026933021542085  # real ids exceed 2**53, as JSON consumers must know
    instance_name: str = "remits-guest"
    is_production: bool = True

    def extension_value(self) -> bytes:
        """The DER of the instance-information extension, in the layout ``akcert`` reads."""
        security = _der(
            0x30, _der(0xA0, _der_int(0)) + _der(0xA1, _der(0x01, b"\xff" if self.is_production else b"\x00"))
        )
        return _der(
            0x30,
            _der_utf8(self.zone)
            + _der_int(self.project_number)
            + _der_utf8(self.project_id)
            + _der_int(self.instance_id)
            + _der_utf8(self.instance_name)
            + _der(0xA0, security),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "REMITS test vendor"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "REMITS"),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip


@dataclass
class SimulatedGoogleCa:
    """A test "EK/AK CA": a root and an intermediate that issues AK certificates."""

    root_key: rsa.RSAPrivateKey
    root: x509.Certificate
    intermediate_key: rsa.RSAPrivateKey
    intermediate: x509.Certificate

    @classmethod
    def generate(cls, label: str = "EK/AK CA", now: datetime | None = None) -> SimulatedGoogleCa:
        now = now or datetime.now(UTC)
        root_key = rsa.generate_private_key(65537, 2048)
        root_name = _name(f"{label} Root")
        root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        intermediate_key = rsa.generate_private_key(65537, 2048)
        intermediate = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{label} Intermediate"))
            .issuer_name(root_name)
            .public_key(intermediate_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        return cls(root_key, root, intermediate_key, intermediate)

    def roots_pem(self) -> bytes:
        """The PEM file a verifier is told to trust (``gcp_ak_roots_path``)."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    def issue_ak_cert(
        self,
        ak_public: rsa.RSAPublicKey,
        instance: Instance,
        now: datetime | None = None,
        lifetime: timedelta = timedelta(days=365),
    ) -> bytes:
        now = now or datetime.now(UTC)
        san = x509.SubjectAlternativeName(
            [
                x509.DirectoryName(
                    x509.Name(
                        [
                            x509.NameAttribute(_TPM_MANUFACTURER, "id:474F4F47"),
                            x509.NameAttribute(_TPM_MODEL, "vTPM"),
                            x509.NameAttribute(_TPM_VERSION, "id:20160511"),
                        ]
                    )
                )
            ]
        )
        usage = x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        )  # fmt: skip
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))  # Google's AK certificates have an empty subject
            .issuer_name(self.intermediate.subject)
            .public_key(ak_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(san, critical=True)  # critical because the subject is empty (RFC 5280)
            .add_extension(
                x509.UnrecognizedExtension(INSTANCE_INFO_OID, instance.extension_value()), critical=False
            )
            .sign(self.intermediate_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------------------------------
# event log


@dataclass(frozen=True)
class LogEvent:
    pcr: int
    event_type: int
    data: bytes
    measured: bytes | None = None  # what is hashed, when not the event data itself

    def digest(self, alg: int) -> bytes:
        return BANKS[alg](self.data if self.measured is None else self.measured).digest()


def _variable(guid: bytes, name: str, value: bytes) -> bytes:
    encoded = name.encode("utf-16-le")
    return guid + struct.pack("<QQ", len(name), len(value)) + encoded + value


def default_events(
    kernel: bytes = b"remits demo kernel", secure_boot: bool = True, firmware: bytes = b"remits demo firmware"
) -> list[LogEvent]:
    """A short UEFI boot: firmware in PCR 0, Secure Boot state in PCR 7, separators, a boot loader
    and a kernel in PCR 4, the kernel command line in PCR 8."""
    cmdline = b"console=ttyS0 root=/dev/sda1 ro"
    events = [
        LogEvent(0, EV_S_CRTM_VERSION, "GCE Virtual Firmware v1".encode("utf-16-le") + b"\x00\x00"),
        LogEvent(0, EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", 0xFFC00000, 0x400000), firmware),
        LogEvent(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            _variable(EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01" if secure_boot else b"\x00"),
        ),
    ]
    events += [LogEvent(pcr, EV_SEPARATOR, b"\x00\x00\x00\x00") for pcr in range(8)]
    events += [
        LogEvent(4, EV_EFI_BOOT_SERVICES_APPLICATION, b"\x00" * 32, b"remits demo boot loader"),
        LogEvent(8, EV_IPL, b"kernel_cmdline: " + cmdline + b"\x00", cmdline),
        LogEvent(4, EV_EFI_BOOT_SERVICES_APPLICATION, b"\x01" * 32, kernel),
    ]
    return events


def encode_log(events: list[LogEvent]) -> bytes:
    """A crypto-agile log: the Spec ID Event03, then one TCG_PCR_EVENT2 per event."""
    algs = list(BANKS)
    spec = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
    spec += b"".join(struct.pack("<HH", alg, BANKS[alg]().digest_size) for alg in algs) + b"\x00"
    out = struct.pack("<II20sI", 0, EV_NO_ACTION, bytes(20), len(spec)) + spec
    for event in events:
        digests = b"".join(struct.pack("<H", alg) + event.digest(alg) for alg in algs)
        out += struct.pack("<III", event.pcr, event.event_type, len(algs)) + digests
        out += struct.pack("<I", len(event.data)) + event.data
    return out


def replay(events: list[LogEvent]) -> dict[int, dict[int, bytes]]:
    """The PCRs the events give, per bank algorithm."""
    banks: dict[int, dict[int, bytes]] = {}
    for alg, fn in BANKS.items():
        size = fn().digest_size
        pcrs = {i: (b"\xff" if i in _DRTM else b"\x00") * size for i in range(PCR_COUNT)}
        for event in events:
            pcrs[event.pcr] = fn(pcrs[event.pcr] + event.digest(alg)).digest()
        banks[alg] = pcrs
    return banks


# ---------------------------------------------------------------------------------------------
# the VM


@dataclass
class SimulatedGceVm:
    """One Shielded VM: its vTPM's AK and certificate, its PCRs and the log that explains them."""

    ca: SimulatedGoogleCa
    instance: Instance
    ak_key: rsa.RSAPrivateKey
    ak_cert_der: bytes
    events: list[LogEvent]
    pcrs: dict[int, dict[int, bytes]]
    include_log: bool = True
    reset_count: int = 3
    _clock: int = 1_000_000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls,
        ca: SimulatedGoogleCa,
        instance: Instance | None = None,
        *,
        kernel: bytes = b"remits demo kernel",
        firmware: bytes = b"remits demo firmware",
        secure_boot: bool = True,
        include_log: bool = True,
        now: datetime | None = None,
    ) -> SimulatedGceVm:
        instance = instance or Instance()
        ak_key = rsa.generate_private_key(65537, 2048)
        events = default_events(kernel, secure_boot, firmware)
        return cls(
            ca=ca,
            instance=instance,
            ak_key=ak_key,
            ak_cert_der=ca.issue_ak_cert(ak_key.public_key(), instance, now),
            events=events,
            pcrs=replay(events),
            include_log=include_log,
        )

    def roots_pem(self) -> bytes:
        return self.ca.roots_pem()

    def pcr(self, index: int, alg: int = TPM_ALG_SHA256) -> bytes:
        return self.pcrs[alg][index]

    def ak_pub(self) -> bytes:
        return marshal_public(self.ak_key.public_key(), scheme=TPM_ALG_RSASSA, scheme_hash=TPM_ALG_SHA256)

    def quote(self, alg: int, extra_data: bytes) -> bytes:
        """One ``Quote`` message: TPMS_ATTEST over every PCR of bank ``alg``, its signature, the PCRs."""
        with self._lock:  # the TPM clock only moves forward, quote after quote
            self._clock += 1000
            clock = self._clock
        values = self.pcrs[alg]
        selection = PcrSelection(alg, tuple(range(PCR_COUNT)))
        # The pcrDigest uses the signing scheme's hash (SHA-256), whatever the bank.
        digest = hashlib.sha256(b"".join(values[i] for i in range(PCR_COUNT))).digest()
        message = marshal_attest(
            extra_data=extra_data,
            pcr_selections=(selection,),
            pcr_digest=digest,
            qualified_signer=parse_public(self.ak_pub()).name(),
            clock=clock,
            reset_count=self.reset_count,
            firmware_version=0x2016051100162800,  # the size of a real vTPM firmware version (> 2**53)
        )
        raw_sig = self.ak_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        signature = marshal_signature(Signature(TPM_ALG_RSASSA, TPM_ALG_SHA256, raw_sig))
        pcrs = pb_varint(1, alg) + b"".join(
            pb_bytes(2, pb_varint(1, i) + pb_bytes(2, values[i])) for i in range(PCR_COUNT)
        )
        return pb_bytes(1, message) + pb_bytes(2, signature) + pb_bytes(3, pcrs)

    def attestation(self, extra_data: bytes, *, intermediates: bool = True) -> bytes:
        """The serialized ``attest.Attestation``: fields 1 ak_pub, 2 quotes, 3 event_log, 6 ak_cert,
        7 intermediate_certs."""
        out = pb_bytes(1, self.ak_pub())
        for alg in BANKS:
            out += pb_bytes(2, self.quote(alg, extra_data))
        if self.include_log:
            out += pb_bytes(3, encode_log(self.events))
        out += pb_bytes(6, self.ak_cert_der)
        if intermediates:
            out += pb_bytes(7, self.ca.intermediate.public_bytes(serialization.Encoding.DER))
        return out


def gcp_vtpm_evidence(sim: SimulatedGceVm, nonce: str, tee_pubkey: dict[str, Any]) -> bytes:
    """The protobuf a guest sends for a KBS challenge: every quote's extraData is the KBS runtime-data
    digest (SHA-384 of the canonical {nonce, tee-pubkey, additional-evidence})."""
    return sim.attestation(runtime_data_digest(nonce, tee_pubkey))


def roots_pem(sim: SimulatedGceVm | SimulatedGoogleCa) -> bytes:
    return sim.roots_pem()
