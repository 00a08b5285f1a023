"""A simulated AMD SEV-SNP vendor and fleet, for `remits demo --tee snp` and the tests.

Everything is in AMD's real formats so that the real verification path runs: an RSA-4096 ARK and
ASK signing with RSASSA-PSS/SHA-384 (salt 48), P-384 VCEKs carrying AMD's extensions (SPLs,
hwID), 1184-byte ATTESTATION_REPORTs signed over bytes 0x000-0x29F with little-endian r and s,
and a local key server answering on KDS's paths. Only the trust anchor differs: a test ARK that
the service must be told to trust explicitly.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from services.demo.serving import serve

AMD_OID = "1.3.6.1.4.1.3704.1"
REPORT_SIZE = 0x4A0
SIGNED_END = 0x2A0
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

# Product -> (CPUID family, CPUID model, ASK common name suffix, VCEK productName)
PRODUCTS = {
    "Milan": (0x19, 0x01, "Milan", "Milan-B0"),
    "Genoa": (0x19, 0x11, "Genoa", "Genoa"),
}


@dataclass(frozen=True)
class Tcb:
    bootloader: int
    tee: int
    snp: int
    microcode: int

    def encode(self) -> bytes:
        # Milan/Genoa layout: byte 0 bl, 1 tee, 2-5 reserved, 6 snp, 7 ucode.
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def query(self) -> str:
        return f"blSPL={self.bootloader}&teeSPL={self.tee}&snpSPL={self.snp}&ucodeSPL={self.microcode}"


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return b"\x02" + bytes([len(body)]) + body


def _der_ia5(text: str) -> bytes:
    raw = text.encode("ascii")
    return b"\x16" + bytes([len(raw)]) + raw


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "REMITS test AMD"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ext(suffix: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_OID}.{suffix}"), value)


@dataclass
class SimulatedAmd:
    """A test ARK/ASK for one product, issuing VCEKs the way KDS does."""

    product: str
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate

    @classmethod
    def generate(cls, product: str = "Milan", now: datetime | None = None) -> SimulatedAmd:
        now = now or datetime.now(UTC)
        _, _, suffix, _ = PRODUCTS[product]
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        start, end = now - timedelta(days=1), now + timedelta(days=25 * 365)
        ark = (
            x509.CertificateBuilder()
            .subject_name(_name(f"ARK-{suffix}"))
            .issuer_name(_name(f"ARK-{suffix}"))
            .public_key(ark_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(ark_key, hashes.SHA384(), rsa_padding=PSS)
        )
        ask = (
            x509.CertificateBuilder()
            .subject_name(_name(f"SEV-{suffix}"))
            .issuer_name(ark.subject)
            .public_key(ask_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(ark_key, hashes.SHA384(), rsa_padding=PSS)
        )
        return cls(product, ark_key, ark, ask_key, ask)

    def issue_vcek(self, chip_id: bytes, tcb: Tcb, public_key: ec.EllipticCurvePublicKey, now: datetime | None = None) -> bytes:
        now = now or datetime.now(UTC)
        _, _, _, product_name = PRODUCTS[self.product]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")]))
            .issuer_name(self.ask.subject)
            .public_key(public_key)
            .serial_number(1)  # real VCEKs use 0, which this library refuses to issue
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=7 * 365))
            .add_extension(_ext("1", _der_integer(0)), critical=False)
            .add_extension(_ext("2", _der_ia5(product_name)), critical=False)
            .add_extension(_ext("3.1", _der_integer(tcb.bootloader)), critical=False)
            .add_extension(_ext("3.2", _der_integer(tcb.tee)), critical=False)
            .add_extension(_ext("3.3", _der_integer(tcb.snp)), critical=False)
            .add_extension(_ext("3.8", _der_integer(tcb.microcode)), critical=False)
            .add_extension(_ext("4", chip_id), critical=False)
        )
        return builder.sign(self.ask_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)

    def cert_chain_pem(self) -> bytes:
        pem = serialization.Encoding.PEM
        return self.ask.public_bytes(pem) + self.ark.public_bytes(pem)

    def ark_pem(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.PEM)

    def crl_der(self, revoked_serials: tuple[int, ...] = (), now: datetime | None = None) -> bytes:
        now = now or datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(now - timedelta(hours=1))
            .next_update(now + timedelta(days=7))
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - timedelta(hours=1)).build()
            )
        return builder.sign(self.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)


@dataclass
class SimulatedSnpGuest:
    """One chip (with its VCEK key at a TCB) running one guest image."""

    product: str
    chip_id: bytes
    vcek_key: ec.EllipticCurvePrivateKey
    tcb: Tcb
    measurement: bytes
    policy: int = 0x30000
    host_data: bytes = bytes(32)

    @classmethod
    def create(cls, measurement: bytes, product: str = "Milan", tcb: Tcb | None = None, debug: bool = False) -> SimulatedSnpGuest:
        return cls(
            product=product,
            chip_id=os.urandom(64),
            vcek_key=ec.generate_private_key(ec.SECP384R1()),
            tcb=tcb or Tcb(bootloader=4, tee=0, snp=27, microcode=222),
            measurement=measurement,
            policy=0x30000 | (1 << 19 if debug else 0),
        )

    def make_report(self, report_data: bytes) -> bytes:
        family, model, _, _ = PRODUCTS[self.product]
        report = bytearray(REPORT_SIZE)
        struct.pack_into("<IIQ", report, 0x000, 3, 1, self.policy)  # version 3, guest_svn 1
        struct.pack_into("<II", report, 0x030, 0, 1)  # vmpl 0, signature algo 1 (ECDSA P-384)
        report[0x038:0x040] = self.tcb.encode()  # current_tcb
        struct.pack_into("<Q", report, 0x040, 0x25)  # platform_info: SMT, ECC, alias check
        struct.pack_into("<I", report, 0x048, 0)  # signer_info: VCEK
        report[0x050:0x090] = report_data.ljust(64, b"\x00")[:64]
        report[0x090:0x0C0] = self.measurement
        report[0x0C0:0x0E0] = self.host_data
        report[0x140:0x160] = os.urandom(32)  # report_id
        report[0x160:0x180] = b"\xff" * 32  # report_id_ma: no migration agent
        report[0x180:0x188] = self.tcb.encode()  # reported_tcb
        report[0x188:0x18B] = bytes([family, model, 1])
        report[0x1A0:0x1E0] = self.chip_id
        report[0x1E0:0x1E8] = self.tcb.encode()  # committed_tcb
        report[0x1E8:0x1EB] = bytes([11, 55, 1])  # current build/minor/major
        report[0x1EC:0x1EF] = bytes([11, 55, 1])
        report[0x1F0:0x1F8] = self.tcb.encode()  # launch_tcb
        der = self.vcek_key.sign(bytes(report[:SIGNED_END]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        report[0x2A0:0x2E8] = r.to_bytes(72, "little")
        report[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(report)


@dataclass
class LocalAmdKds:
    """Answers on AMD KDS's paths for the simulated vendor; counts every request."""

    vendor: SimulatedAmd
    vceks: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (hwid hex, query) -> DER
    request_count: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    def enroll(self, guest: SimulatedSnpGuest) -> bytes:
        der = self.vendor.issue_vcek(guest.chip_id, guest.tcb, guest.vcek_key.public_key())
        self.vceks[(guest.chip_id.hex(), guest.tcb.query())] = der
        return der

    async def _vcek(self, request: web.Request) -> web.Response:
        self.request_count[request.path] += 1
        product, hwid = request.match_info["product"], request.match_info["hwid"].lower()
        if product != self.vendor.product:
            return web.Response(status=404, text="unknown product")
        query = "&".join(f"{k}={int(request.query.get(k, '-1'))}" for k in ("blSPL", "teeSPL", "snpSPL", "ucodeSPL"))
        der = self.vceks.get((hwid, query))
        if der is None:
            return web.Response(status=404, text="unknown chip or TCB")
        return web.Response(body=der, content_type="application/pkix-cert")

    async def _chain(self, request: web.Request) -> web.Response:
        self.request_count[request.path] += 1
        return web.Response(body=self.vendor.cert_chain_pem(), content_type="application/x-pem-file")

    async def _crl(self, request: web.Request) -> web.Response:
        self.request_count[request.path] += 1
        return web.Response(body=self.vendor.crl_der(), content_type="application/pkix-crl")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/vcek/v1/{product}/cert_chain", self._chain)
        app.router.add_get("/vcek/v1/{product}/crl", self._crl)
        app.router.add_get("/vcek/v1/{product}/{hwid}", self._vcek)
        self._runner, self.base_url = await serve(app, host, port)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
