"""A simulated TPM 2.0 for `remits demo --tee tpm` and the tests.

Real cryptography and the TPM's real formats, so the real verification path runs: a software
attestation key (RSA-2048 signing RSASSA/SHA-256, or ECDSA P-256/SHA-256), 24 SHA-256 PCRs that
start as a TPM's do (PCRs 17-22, the DRTM ones, at all ones) and are extended PCR = H(PCR || digest),
a clock with reset and restart counters, quotes that are marshalled TPMS_ATTEST structures signed
with the AK, and a TCG crypto-agile event log (SHA-256 only) that records every logged extend, so
its replay gives the quoted PCRs. What differs from hardware: the AK lives in this process, and
nothing but the operator's registry (its fingerprint as the ``tpm``/``ak`` reference value) says
it belongs to a TPM.

For enrolment by credential activation it also has an endorsement key (RSA 2048, the default EK
template; made on first use, so a fleet of simulated nodes does not pay for it), an EK certificate
issued by a test CA, and TPM2_ActivateCredential, which opens a credential only for its own AK.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from shared.kbs.binding import expected_report_data
from shared.platforms.tpm import abi, credential
from shared.platforms.tpm import eventlog as tcg

PCR_COUNT = 24
DIGEST_SIZE = 32
_ALL_PCRS = abi.PcrSelection(abi.TPM_ALG_SHA256, tuple(range(PCR_COUNT)))

# TCG OIDs of an EK certificate (TCG EK Credential Profile): the TPM's manufacturer, model and
# version as directoryName attributes of its subjectAltName, and the EK certificate purpose.
TCG_AT_TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
TCG_AT_TPM_MODEL = ObjectIdentifier("2.23.133.2.2")
TCG_AT_TPM_VERSION = ObjectIdentifier("2.23.133.2.3")
TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")


@dataclass(frozen=True)
class EkCa:
    """A test EK CA: what a TPM manufacturer's CA is to real EK certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "REMITS simulated TPM EK CA", *, days: int = 3650) -> EkCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _legacy_record(pcr: int, event_type: int, data: bytes) -> bytes:
    """A TCG_PCClientPCREvent (the layout of the Spec ID event that opens a crypto-agile log)."""
    return struct.pack("<II20sI", pcr, event_type, bytes(20), len(data)) + data


def _event2_record(pcr: int, event_type: int, digest: bytes, data: bytes) -> bytes:
    """A TCG_PCR_EVENT2 with one SHA-256 digest."""
    return (
        struct.pack("<IIIH", pcr, event_type, 1, abi.TPM_ALG_SHA256)
        + digest
        + struct.pack("<I", len(data))
        + data
    )


def _spec_id_event() -> bytes:
    # "Spec ID Event03", platform class 0 (client), spec 2.0 errata 0, uintnSize 2 (64-bit UINTN),
    # one algorithm (SHA-256, 32 bytes), no vendor info.
    body = tcg.SPEC_ID_SIGNATURE + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1)
    body += struct.pack("<HH", abi.TPM_ALG_SHA256, DIGEST_SIZE) + b"\x00"
    return _legacy_record(0, tcg.EV_NO_ACTION, body)


def uefi_variable(guid: bytes, name: str, value: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: vendor GUID, name length (chars), data length, UTF-16LE name, data."""
    encoded = name.encode("utf-16-le")
    return struct.pack("<16sQQ", guid, len(encoded) // 2, len(value)) + encoded + value


@dataclass
class SimulatedTpm:
    ak_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    pcrs: list[bytes] = field(default_factory=list)
    clock: int = 1_000_000  # milliseconds the TPM has been powered
    reset_count: int = 1
    restart_count: int = 0
    firmware_version: int = 0x0001_0002_0003_0004
    log: list[bytes] = field(default_factory=list)  # TCG_PCR_EVENT2 records, in order
    ek_key: rsa.RSAPrivateKey | None = None  # made on first use (see ``ek``)

    @classmethod
    def create(cls, key_type: Literal["rsa", "ecc"] = "rsa") -> SimulatedTpm:
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if key_type == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        tpm = cls(key)
        tpm.power_on()
        return tpm

    # -- state ---------------------------------------------------------------------------------
    def power_on(self) -> None:
        """TPM2_Startup(CLEAR): PCRs to their initial values; the log starts over."""
        self.pcrs = [
            b"\xff" * DIGEST_SIZE if i in tcg.DRTM_PCRS else bytes(DIGEST_SIZE) for i in range(PCR_COUNT)
        ]
        self.log = []

    def reboot(self) -> None:
        """A TPM Reset: reset count up, restart count to zero, PCRs and log start over."""
        self.reset_count += 1
        self.restart_count = 0
        self.power_on()

    def extend(
        self,
        pcr: int,
        digest: bytes,
        *,
        event_type: int = tcg.EV_ACTION,
        data: bytes = b"",
        logged: bool = True,
    ) -> None:
        """PCR = SHA-256(PCR || digest); recorded in the event log unless ``logged`` is False
        (what IMA does for PCR 10: its log is a different one)."""
        if len(digest) != DIGEST_SIZE:
            raise ValueError("a SHA-256 extend takes a 32-byte digest")
        self.pcrs[pcr] = _sha256(self.pcrs[pcr] + digest)
        if logged:
            self.log.append(_event2_record(pcr, event_type, digest, data))

    def measure(
        self, pcr: int, data: bytes, event_type: int = tcg.EV_ACTION, *, event_data: bytes | None = None
    ) -> None:
        """Extend with SHA-256(data) and log it; the event's data is ``event_data`` (default: data)."""
        self.extend(
            pcr, _sha256(data), event_type=event_type, data=data if event_data is None else event_data
        )

    def boot(self, *, kernel: bytes = b"simulated kernel image", secure_boot: bool = True) -> None:
        """A small UEFI + shim + GRUB + EFI-stub-kernel measured boot, the shape the event log
        reader expects: firmware version (PCR 0), SecureBoot and PK (PCR 7), separators in PCRs
        0-7, the boot loaders and then the kernel as EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4 around
        GRUB's commands (EV_IPL in PCR 8)."""
        self.measure(0, b"simulated firmware 1.0", tcg.EV_S_CRTM_VERSION)
        variable = uefi_variable(tcg.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01" if secure_boot else b"\x00")
        self.measure(7, variable, tcg.EV_EFI_VARIABLE_DRIVER_CONFIG)
        self.measure(
            7,
            uefi_variable(tcg.EFI_GLOBAL_VARIABLE, "PK", b"simulated platform key"),
            tcg.EV_EFI_VARIABLE_DRIVER_CONFIG,
        )
        for pcr in range(8):
            self.measure(pcr, tcg.SEPARATOR_NORMAL, tcg.EV_SEPARATOR)
        self.extend(
            4,
            _sha256(b"shim"),
            event_type=tcg.EV_EFI_BOOT_SERVICES_APPLICATION,
            data=b"\\EFI\\BOOT\\BOOTX64.EFI",
        )
        self.extend(
            4,
            _sha256(b"grub"),
            event_type=tcg.EV_EFI_BOOT_SERVICES_APPLICATION,
            data=b"\\EFI\\sim\\grubx64.efi",
        )
        command = b"linux /vmlinuz root=/dev/vda1"
        self.measure(8, command, tcg.EV_IPL, event_data=tcg.GRUB_CMD_PREFIX + command + b"\x00")
        cmdline = b"/vmlinuz root=/dev/vda1 ro"
        self.measure(8, cmdline, tcg.EV_IPL, event_data=tcg.GRUB_CMDLINE_PREFIX + cmdline + b"\x00")
        self.extend(4, _sha256(kernel), event_type=tcg.EV_EFI_BOOT_SERVICES_APPLICATION, data=b"\\vmlinuz")

    def eventlog(self) -> bytes:
        return _spec_id_event() + b"".join(self.log)

    # -- keys ----------------------------------------------------------------------------------
    @property
    def ak_public(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return self.ak_key.public_key()

    def ak_spki(self) -> bytes:
        return self.ak_public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def ak_pem(self) -> bytes:
        return self.ak_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def ak_tpmt_public(self) -> bytes:
        return abi.marshal_public(self.ak_public)

    def ak_fingerprint(self) -> str:
        """SHA-256 hex of the AK's DER SubjectPublicKeyInfo: its name in the AK registry."""
        return hashlib.sha256(self.ak_spki()).hexdigest()

    def ak_name(self) -> bytes:
        """The AK's TPM Name: nameAlg || SHA-256(TPMT_PUBLIC)."""
        return abi.parse_public(self.ak_tpmt_public()).name()

    # -- endorsement key -------------------------------------------------------------------------
    @property
    def ek(self) -> rsa.RSAPrivateKey:
        """The EK's private key (RSA 2048), made the first time it is needed."""
        if self.ek_key is None:
            self.ek_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.ek_key

    def ek_tpmt_public(self) -> bytes:
        """The EK's TPMT_PUBLIC (default template L-1)."""
        return credential.marshal_ek_public(self.ek.public_key())

    def ek_certificate(
        self, ca: EkCa, *, not_before: datetime | None = None, not_after: datetime | None = None
    ) -> bytes:
        """An EK certificate (DER) from ``ca``, shaped like a manufacturer's: empty subject, the
        TPM's identity in a critical subjectAltName of TCG attributes, keyEncipherment, the EK
        certificate purpose."""
        now = datetime.now(UTC)
        tpm_identity = x509.Name(
            [
                x509.NameAttribute(TCG_AT_TPM_MANUFACTURER, "id:52454D49"),
                x509.NameAttribute(TCG_AT_TPM_MODEL, "REMITS simulated TPM"),
                x509.NameAttribute(TCG_AT_TPM_VERSION, "id:00010002"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.cert.subject)
            .public_key(self.ek.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(days=1))
            .not_valid_after(not_after or now + timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm_identity)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([TCG_KP_EK_CERTIFICATE]), critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK as the activated object: the secret, if the
        credential was made for this TPM's EK and this AK's Name (else a ``RemitsError``)."""
        return credential.activate_credential(self.ek, self.ak_name(), credential_blob, encrypted_secret)

    # -- quotes --------------------------------------------------------------------------------
    def quote(self, extra_data: bytes) -> tuple[bytes, bytes]:
        """TPM2_Quote over all 24 SHA-256 PCRs: (TPMS_ATTEST, marshalled TPMT_SIGNATURE)."""
        self.clock += 1_000
        public = abi.parse_public(self.ak_tpmt_public())
        message = abi.marshal_attest(
            extra_data=extra_data,
            pcr_selections=[_ALL_PCRS],
            pcr_digest=_sha256(b"".join(self.pcrs)),
            qualified_signer=public.name(),
            clock=self.clock,
            reset_count=self.reset_count,
            restart_count=self.restart_count,
            safe=True,
            firmware_version=self.firmware_version,
        )
        if isinstance(self.ak_key, rsa.RSAPrivateKey):
            raw = self.ak_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
            signature = abi.Signature(abi.TPM_ALG_RSASSA, abi.TPM_ALG_SHA256, raw)
        else:
            der = self.ak_key.sign(message, ec.ECDSA(hashes.SHA256()))
            signature = abi.ecdsa_signature(der, abi.TPM_ALG_SHA256, 32)
        return message, abi.marshal_signature(signature)

    def evidence_doc(self, nonce_binding: bytes, *, with_eventlog: bool = True) -> dict[str, Any]:
        message, signature = self.quote(nonce_binding)
        doc: dict[str, Any] = {
            "ak_public": base64.b64encode(self.ak_spki()).decode(),
            "tpm_quote": {
                "message": base64.b64encode(message).decode(),
                "signature": base64.b64encode(signature).decode(),
                "pcrs": [value.hex() for value in self.pcrs],
            },
        }
        if with_eventlog and self.log:
            doc["eventlog"] = base64.b64encode(self.eventlog()).decode()
        return doc

    def evidence(self, nonce_binding: bytes, *, with_eventlog: bool = True) -> bytes:
        """The evidence JSON (Trustee's TPM shape) with extraData = ``nonce_binding``."""
        return json.dumps(self.evidence_doc(nonce_binding, with_eventlog=with_eventlog)).encode()


def tpm_evidence(
    sim: SimulatedTpm, nonce: str, tee_pubkey: dict[str, str], *, with_eventlog: bool = True
) -> dict[str, Any]:
    """The guest's primary evidence for a KBS challenge: extraData = the 64-byte runtime-data binding."""
    return sim.evidence_doc(expected_report_data(nonce, tee_pubkey), with_eventlog=with_eventlog)
