"""KDS URLs: the builder reproduces every kds_vcek_url in the vectors; parsing accepts the variants
seen in working URLs and maps them back to one canonical form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ParseError
from shared.platforms.snp import kds
from shared.platforms.snp.abi import SnpReport, parse_report
from shared.platforms.snp.certs import VekKind
from shared.platforms.snp.fields import Product, TcbVersion

DATA = Path(__file__).parents[1] / "data/snp/reports"
CASES = sorted(p.name for p in DATA.iterdir())
EXPECTED: dict[str, dict[str, Any]] = {n: json.loads((DATA / n / "expected.json").read_text()) for n in CASES}
VCEK_CASES = [n for n in CASES if "kds_vcek_url" in EXPECTED[n]]


def _report(name: str) -> SnpReport:
    return parse_report((DATA / name / "report.bin").read_bytes(), Product(EXPECTED[name]["product"]))


def test_every_vcek_case_has_a_url() -> None:
    assert [n for n in CASES if EXPECTED[n]["signer"] == "VCEK"] == VCEK_CASES
    assert len(VCEK_CASES) == 13


@pytest.mark.parametrize("name", VCEK_CASES)
def test_vcek_url_reproduces_expected(name: str) -> None:
    report = _report(name)
    want = EXPECTED[name]["kds_vcek_url"]
    assert kds.vcek_url_for_report(report) == want
    assert kds.vcek_url(report.product, report.chip_id, report.reported_tcb) == want
    request = kds.parse_vcek_url(want)
    assert request.product is report.product
    assert request.url() == want
    assert dict(request.spls) == report.reported_tcb.components()


def test_vcek_url_uses_reported_not_current_tcb() -> None:
    report = _report("milan_v2_trustee")  # REPORTED ucode 115, CURRENT ucode 206
    assert report.current_tcb.microcode != report.reported_tcb.microcode
    assert "ucodeSPL=115" in kds.vcek_url_for_report(report)


def test_turin_url_has_fmc_first_and_short_hwid() -> None:
    url = kds.vcek_url_for_report(_report("turin_oak_oc"))
    assert (
        url == "https://kdsintf.amd.com/vcek/v1/Turin/3b42092f69c656d3"
        "?fmcSPL=0&blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71"
    )


def test_vlek_is_not_fetchable() -> None:
    with pytest.raises(ParseError) as info:
        kds.vcek_url_for_report(_report("milan_v3_vlek_aws_trustee"))
    assert info.value.reason == "parse.kds.signing_key"


@pytest.mark.parametrize(
    "base", ["http://127.0.0.1:8080", "http://127.0.0.1:8080/", "https://proxy.example/amd/kds/"]
)
def test_configurable_base(base: str) -> None:
    name = "genoa_oak_oc"
    url = kds.vcek_url_for_report(_report(name), base=base)
    assert url == base.rstrip("/") + EXPECTED[name]["kds_vcek_url"].removeprefix(kds.DEFAULT_KDS_BASE)
    assert kds.parse_vcek_url(url).url() == EXPECTED[name]["kds_vcek_url"]
    assert kds.cert_chain_url(Product.GENOA, base=base) == base.rstrip("/") + "/vcek/v1/Genoa/cert_chain"


@pytest.mark.parametrize("product", list(Product))
def test_chain_and_crl_urls(product: Product) -> None:
    p = product.value
    assert kds.cert_chain_url(product) == f"https://kdsintf.amd.com/vcek/v1/{p}/cert_chain"
    assert kds.cert_chain_url(product, VekKind.VLEK) == f"https://kdsintf.amd.com/vlek/v1/{p}/cert_chain"
    assert kds.crl_url(product) == f"https://kdsintf.amd.com/vcek/v1/{p}/crl"
    assert kds.crl_url(product, VekKind.VLEK) == f"https://kdsintf.amd.com/vlek/v1/{p}/crl"


def test_parse_accepts_seen_variants() -> None:
    # Upper-case hex and a zero-padded SPL, as in Oak's Genoa textproto.
    want = EXPECTED["genoa_oak_oc"]["kds_vcek_url"]
    path, query = want.split("?")
    prefix, hw = path.rsplit("/", 1)
    variant = f"{prefix}/{hw.upper()}?{query.replace('teeSPL=0', 'teeSPL=00')}"
    assert kds.parse_vcek_url(variant).url() == want
    # Reversed parameter order, as in the URL the Turin VCEK was downloaded from.
    turin = "/vcek/v1/Turin/3b42092f69c656d3?ucodeSPL=71&snpSPL=2&teeSPL=0&blSPL=1&fmcSPL=0"
    assert kds.parse_vcek_url(turin).url() == EXPECTED["turin_oak_oc"]["kds_vcek_url"]
    # A bare path works too (base is not part of the identity).
    assert kds.parse_vcek_url(want.removeprefix(kds.DEFAULT_KDS_BASE)).url() == want


MILAN_URL = EXPECTED["milan_v2_virtee"]["kds_vcek_url"]
TURIN_URL = EXPECTED["turin_oak_oc"]["kds_vcek_url"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (MILAN_URL.replace("/vcek/", "/vlek/"), "parse.kds.url"),
        (MILAN_URL.replace("/Milan/", "/Rome/"), "parse.kds.url"),
        (MILAN_URL.replace("/Milan/", "/Turin/"), "parse.kds.hw_id"),  # Turin with a 64-byte ID fails
        (TURIN_URL.replace("3b42092f69c656d3", "3b42092f69c656d3" + "00" * 56), "parse.kds.hw_id"),
        (TURIN_URL.replace("fmcSPL=0&", ""), "parse.kds.fmcSPL"),
        (MILAN_URL.replace("&ucodeSPL=115", ""), "parse.kds.ucodeSPL"),
        (MILAN_URL + "&blSPL=3", "parse.kds.blSPL"),
        (MILAN_URL + "&fmcSPL=0", "parse.kds.url"),
        (MILAN_URL.replace("ucodeSPL=115", "ucodeSPL=256"), "parse.kds.ucodeSPL"),
        (MILAN_URL.replace("ucodeSPL=115", "ucodeSPL=0x73"), "parse.kds.ucodeSPL"),
        (MILAN_URL.replace("ucodeSPL=115", "ucodeSPL=-1"), "parse.kds.ucodeSPL"),
        (MILAN_URL.replace("ucodeSPL=115", "ucodeSPL="), "parse.kds.ucodeSPL"),
        (MILAN_URL.replace("d49554ec", "x49554ec"), "parse.kds.url"),
        ("not a url", "parse.kds.url"),
    ],
)
def test_parse_rejects(url: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        kds.parse_vcek_url(url)
    assert info.value.reason == reason


def test_parse_rejects_non_str() -> None:
    with pytest.raises(ParseError):
        kds.parse_vcek_url(b"https://kdsintf.amd.com/")  # type: ignore[arg-type]


MILAN_TCB = TcbVersion.decode(bytes.fromhex("0300000000000873"), Product.MILAN)


@pytest.mark.parametrize(
    ("product", "chip_id", "tcb", "reason"),
    [
        (Product.MILAN, bytes(64), MILAN_TCB, "parse.kds.chip_id"),  # masked CHIP_ID
        (Product.MILAN, b"\x01" * 63, MILAN_TCB, "parse.kds.chip_id"),
        (Product.TURIN, b"\x01" * 64, MILAN_TCB, "parse.kds.chip_id"),  # Turin: 8 bytes then zeros
        (Product.TURIN, b"\x01" * 8 + bytes(56), MILAN_TCB, "parse.kds.fmcSPL"),  # Milan TCB lacks fmc
        ("Milan", b"\x01" * 64, MILAN_TCB, "parse.kds.product"),
    ],
)
def test_build_rejects(product: Product, chip_id: bytes, tcb: TcbVersion, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        kds.vcek_url(product, chip_id, tcb)
    assert info.value.reason == reason


def test_bad_base_and_kind() -> None:
    with pytest.raises(ParseError):
        kds.crl_url(Product.MILAN, base="")
    with pytest.raises(ParseError):
        kds.crl_url(Product.MILAN, "VCEK")  # type: ignore[arg-type]
