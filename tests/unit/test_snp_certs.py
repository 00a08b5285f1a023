"""AMD certificates: hand-parsed VEK extensions match the vectors, the shipped roots are the pinned
ones, and the DER reader is strict."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.errors import ParseError
from shared.platforms.snp import der
from shared.platforms.snp.certs import (
    AmdRoots,
    VekKind,
    load_cert_chain,
    load_certificate,
    load_crl,
    parse_vek_extensions,
    pinned_roots,
    product_of_issuer,
    vek_kind,
)
from shared.platforms.snp.fields import Product

DATA = Path(__file__).parents[1] / "data/snp"
CASES = sorted(p.name for p in (DATA / "reports").iterdir())
SHIPPED_ROOTS = Path(__file__).parents[2] / "shared/platforms/snp/roots"

# (vek file, expected.json) for every real VEK, plus the certificate-only Turin VCEK.
VEKS: list[tuple[str, Path, dict[str, Any]]] = [
    (n, DATA / "reports" / n / "vek.der", json.loads((DATA / "reports" / n / "expected.json").read_text()))
    for n in CASES
]
VEKS.append(
    (
        "turin_vcek_virtee",
        DATA / "certs_only/turin_vcek_virtee/vcek.der",
        json.loads((DATA / "certs_only/turin_vcek_virtee/expected.json").read_text()),
    )
)

_NAMES = {
    "structVersion": "struct_version",
    "productName": "product_name",
    "blSPL": "bl_spl",
    "teeSPL": "tee_spl",
    "snpSPL": "snp_spl",
    "ucodeSPL": "ucode_spl",
    "fmcSPL": "fmc_spl",
    "cspID": "csp_id",
}


@pytest.mark.parametrize(("name", "path", "expected"), VEKS, ids=[v[0] for v in VEKS])
def test_vek_extensions_match_vectors(name: str, path: Path, expected: dict[str, Any]) -> None:
    cert = load_certificate(path.read_bytes())
    ext = parse_vek_extensions(cert)
    want = expected["vek_extensions"]
    for key, attr in _NAMES.items():
        assert getattr(ext, attr) == want.get(key), key
    assert (ext.hw_id.hex() if ext.hw_id is not None else None) == want.get("hwID")
    assert vek_kind(cert) is VekKind(expected["signer"])
    assert product_of_issuer(cert) is Product(expected["product"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected["vek_sha256"]


@pytest.mark.parametrize(
    "file", ["trustee_test-vcek-invalid-legacy.der", "trustee_test-vcek-invalid-new.der"]
)
def test_hwid_raw_and_octet_string_forms(file: str) -> None:
    # Same synthetic hwID 00 01 .. 3f; "-new" wraps it in a DER OCTET STRING, "-legacy" does not.
    ext = parse_vek_extensions(load_certificate((DATA / "negative" / file).read_bytes()))
    assert ext.hw_id == bytes(range(64))


def test_spl_above_0x7f_has_leading_zero() -> None:
    cert = load_certificate((DATA / "reports/milan_oak_oc_release/vek.der").read_bytes())
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    assert ext.value == bytes([0x02, 0x02, 0x00, 219])
    assert parse_vek_extensions(cert).ucode_spl == 219


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_pinned_roots_are_the_manifest_roots() -> None:
    manifest = (DATA / "MANIFEST.md").read_text()
    roots = pinned_roots()
    assert set(roots) == set(Product)
    for product, r in roots.items():
        assert isinstance(r, AmdRoots) and r.product is product
        for role, cert, cn in (
            ("ark", r.ark, f"ARK-{product.value}"),
            ("ask", r.ask, f"SEV-{product.value}"),
            ("asvk", r.asvk, f"SEV-VLEK-{product.value}"),
        ):
            assert cert.subject.rfc4514_string().startswith(f"CN={cn},")
            digest = hashlib.sha256(_der(cert)).hexdigest()
            assert f"| {product.value.lower()} | {role} | CN={cn} | `{digest}` |" in manifest
            shipped = (SHIPPED_ROOTS / product.value.lower() / f"{role}.pem").read_bytes()
            assert shipped == (DATA / "amd_roots" / product.value.lower() / f"{role}.pem").read_bytes()
        assert r.intermediate(VekKind.VCEK) is r.ask and r.intermediate(VekKind.VLEK) is r.asvk


def test_pinned_roots_returns_fresh_dicts() -> None:
    first = pinned_roots()
    first.pop(Product.MILAN)
    assert Product.MILAN in pinned_roots()


def test_load_cert_chain_kds_order() -> None:
    roots = pinned_roots()[Product.MILAN]
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (roots.ask, roots.ark))
    ask, ark = load_cert_chain(pem)
    assert _der(ask) == _der(roots.ask) and _der(ark) == _der(roots.ark)
    with pytest.raises(ParseError) as info:
        load_cert_chain(pem + roots.asvk.public_bytes(serialization.Encoding.PEM))
    assert info.value.reason == "parse.cert_chain"
    with pytest.raises(ParseError):
        load_cert_chain(b"garbage")


def test_load_certificate_der_pem_and_garbage() -> None:
    der_bytes = (DATA / "reports/genoa_oak_oc/vek.der").read_bytes()
    cert = load_certificate(der_bytes)
    assert _der(load_certificate(cert.public_bytes(serialization.Encoding.PEM))) == der_bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the serial-0 deprecation warning must not leak
        load_certificate(der_bytes)
    for bad in (b"", b"\x30\x03\x02\x01", der_bytes[:-1]):
        with pytest.raises(ParseError) as info:
            load_certificate(bad, "vek")
        assert info.value.reason == "parse.vek"
    with pytest.raises(ParseError):
        load_certificate("text")  # type: ignore[arg-type]


def test_load_crl_rejects_garbage() -> None:
    with pytest.raises(ParseError) as info:
        load_crl(b"\x30\x00")
    assert info.value.reason == "parse.crl"


def test_vek_kind_and_product_of_other_certs() -> None:
    ark = pinned_roots()[Product.TURIN].ark
    assert vek_kind(ark) is None
    assert product_of_issuer(ark) is None  # "ARK-Turin" is not an ASK/ASVK name


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (bytes([0x02, 0x01, 0x00]), 0),
        (bytes([0x02, 0x01, 0x7F]), 127),
        (bytes([0x02, 0x02, 0x00, 0x80]), 128),
        (bytes([0x02, 0x01, 0xFF]), -1),
        (bytes([0x02, 0x81, 0x80]) + b"\x01" * 0x80, int.from_bytes(b"\x01" * 0x80, "big")),
    ],
)
def test_der_integer(data: bytes, value: int) -> None:
    assert der.read_integer(data, "x") == value


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([0x02]),
        bytes([0x02, 0x00]),  # empty INTEGER
        bytes([0x02, 0x02, 0x00, 0x01]),  # non-minimal
        bytes([0x02, 0x02, 0xFF, 0x80]),  # non-minimal negative
        bytes([0x02, 0x81, 0x01, 0x05]),  # long form for a short length
        bytes([0x02, 0x80, 0x05, 0x00, 0x00]),  # indefinite length
        bytes([0x02, 0x01, 0x05, 0x00]),  # trailing byte
        bytes([0x02, 0x02, 0x05]),  # truncated
        bytes([0x04, 0x01, 0x05]),  # wrong tag
    ],
)
def test_der_integer_rejects(data: bytes) -> None:
    with pytest.raises(ParseError) as info:
        der.read_integer(data, "vek.ext.x")
    assert info.value.reason == "parse.vek.ext.x"


def test_der_ia5_string() -> None:
    assert der.read_ia5_string(b"\x16\x05Turin", "x") == "Turin"
    for bad in (b"\x0c\x05Turin", b"\x16\x01\xff", b"\x16\x06Turin"):
        with pytest.raises(ParseError):
            der.read_ia5_string(bad, "x")
