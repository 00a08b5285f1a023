"""Legacy AMD SEV certificates (ARK/ASK CA format, 2084-byte SEV format) and chain verification.

Real chains: Naples and Rome from virtee/sev tests, Milan from virtee/kbs-types sev_request.json
(copied to tests/data/sev). Simulated chains come from services.demo.sev_sim."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.cli import main as cli_main
from services.demo.sev_sim import SimulatedAmdSev
from shared.errors import ParseError, RemitsError, VerificationError
from shared.platforms.sev import kds
from shared.platforms.sev.abi import (
    SEV_CERT_SIZE,
    Algo,
    AmdCaCert,
    Curve,
    EcPubKey,
    SevCert,
    Usage,
    godh_cert,
    parse_ca_cert,
    parse_sev_cert,
)
from shared.platforms.sev.verify import (
    ALL_CHECKS,
    Generation,
    SevRootPair,
    SevRoots,
    pinned_roots,
    verify_chain,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sev"
ROLES = ("ark", "ask", "cek", "oca", "pek", "pdh")
GENERATIONS = ("naples", "rome", "milan")


def _file_chain(gen: str) -> dict[str, bytes]:
    chain = {role: (DATA / f"builtin-{gen}_{role}.cert").read_bytes() for role in ("ark", "ask")}
    chain.update({role: (DATA / f"{gen}_{role}.cert").read_bytes() for role in ("cek", "oca", "pek", "pdh")})
    return chain


def _request_chain() -> dict[str, bytes]:
    doc = json.loads((DATA / "kbs-types_sev_request.json").read_text())["extra-params"]["chain"]
    return {role: bytes({**doc["ca"], **doc["sev"]}[role]) for role in ROLES}


CHAINS = {"naples": _file_chain("naples"), "rome": _file_chain("rome"), "milan": _request_chain()}


def _verify(chain: dict[str, bytes], roots: SevRoots | None = None):
    return verify_chain(*(chain[r] for r in ROLES), pinned=roots or pinned_roots())


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def _reason(chain: dict[str, bytes], roots: SevRoots | None = None) -> str:
    with pytest.raises(RemitsError) as info:
        _verify(chain, roots)
    assert isinstance(info.value, (ParseError, VerificationError))
    return info.value.reason


# ------------------------------------------------------------------------------------- real chains


@pytest.mark.parametrize("gen", GENERATIONS)
def test_real_chain_verifies(gen: str) -> None:
    verified = _verify(CHAINS[gen])
    assert verified.generation is Generation(gen.capitalize())
    assert verified.checks == ALL_CHECKS
    assert isinstance(verified.pdh_public_key.curve, ec.SECP384R1)
    assert (
        verified.pdh_public_key.public_numbers()
        == parse_sev_cert(CHAINS[gen]["pdh"]).public_key().public_numbers()
    )


def test_milan_builtin_roots_equal_request_roots() -> None:
    for role in ("ark", "ask"):
        assert (DATA / f"builtin-milan_{role}.cert").read_bytes() == CHAINS["milan"][role]


@pytest.mark.parametrize(
    ("gen", "ark_id", "ask_id", "bits"),
    [
        ("naples", "1bb987c359494606b174945601c9ea5b", "e139970c", 2048),
        ("rome", "e6002122fb58419399d15fee7b131351", "c6cbcf14", 4096),
        ("milan", "94c38e4177d0479292a7ae671d083fb6", "73478c05", 4096),
    ],
)
def test_decoded_ca_values(gen: str, ark_id: str, ask_id: str, bits: int) -> None:
    ark = parse_ca_cert(CHAINS[gen]["ark"])
    ask = parse_ca_cert(CHAINS[gen]["ask"])
    assert ark.key_id.hex() == ark_id and ark.certifying_id == ark.key_id and ark.self_signed
    assert ask.key_id.hex().startswith(ask_id) and ask.certifying_id == ark.key_id
    assert (ark.key_usage, ask.key_usage) == (Usage.ARK, Usage.ASK)
    for cert in (ark, ask):
        assert cert.version == 1
        assert cert.modulus_bits == cert.pubexp_bits == bits
        assert cert.pubexp == 65537
        assert len(cert.signature) == bits // 8
        assert cert.size == len(CHAINS[gen]["ark"]) == (832 if bits == 2048 else 1600)


@pytest.mark.parametrize(
    ("gen", "cek_api", "api", "cek_sig_algo"),
    [
        ("naples", (0, 14), (0, 16), Algo.RSA_SHA256),
        ("rome", (0, 14), (0, 22), Algo.RSA_SHA384),
        ("milan", (0, 14), (1, 51), Algo.RSA_SHA384),
    ],
)
def test_decoded_sev_values(gen: str, cek_api, api, cek_sig_algo: Algo) -> None:
    certs = {role: parse_sev_cert(CHAINS[gen][role]) for role in ("cek", "oca", "pek", "pdh")}
    assert (certs["cek"].api_major, certs["cek"].api_minor) == cek_api
    for role in ("oca", "pek", "pdh"):
        assert (certs[role].api_major, certs[role].api_minor) == api
    assert {role: c.pubkey_usage for role, c in certs.items()} == {
        "cek": Usage.CEK,
        "oca": Usage.OCA,
        "pek": Usage.PEK,
        "pdh": Usage.PDH,
    }
    for role, cert in certs.items():
        assert cert.version == 1
        assert cert.pubkey_algo is (Algo.ECDH_SHA256 if role == "pdh" else Algo.ECDSA_SHA256)
        assert isinstance(cert.pubkey, EcPubKey) and cert.pubkey.curve is Curve.P384
    assert [(s.usage, s.algo) for s in certs["cek"].signatures] == [
        (Usage.ASK, cek_sig_algo),
        (Usage.INVALID, Algo.INVALID),
    ]
    assert [(s.usage, s.algo) for s in certs["oca"].signatures] == [
        (Usage.OCA, Algo.ECDSA_SHA256),
        (Usage.INVALID, Algo.INVALID),
    ]
    assert [(s.usage, s.algo) for s in certs["pek"].signatures] == [
        (Usage.OCA, Algo.ECDSA_SHA256),
        (Usage.CEK, Algo.ECDSA_SHA256),
    ]
    assert [(s.usage, s.algo) for s in certs["pdh"].signatures] == [
        (Usage.PEK, Algo.ECDSA_SHA256),
        (Usage.INVALID, Algo.INVALID),
    ]


@pytest.mark.parametrize(("gen", "role"), [(g, r) for g in GENERATIONS for r in ROLES])
def test_round_trip_exact(gen: str, role: str) -> None:
    data = CHAINS[gen][role]
    cert = parse_ca_cert(data) if role in ("ark", "ask") else parse_sev_cert(data)
    assert cert.encode() == data
    assert len(data) == (SEV_CERT_SIZE if role not in ("ark", "ask") else len(data))


def test_pinned_roots_are_the_vector_roots() -> None:
    roots = pinned_roots()
    assert {pair.generation for pair in roots.pairs} == set(Generation)
    for gen in GENERATIONS:
        pair = roots.for_generation(Generation(gen.capitalize()))
        assert pair.ark.encode() == CHAINS[gen]["ark"] and pair.ask.encode() == CHAINS[gen]["ask"]


# --------------------------------------------------------------------------------------- bit flips

# (role, offset, expected reason): offsets chosen per field. Signed data of SEV certs = [0, 0x414).
_SEV_FLIPS = [
    (0x005, "signed"),  # API_MINOR: signed, parses
    (0x014, "parse:pubkey.point"),  # QX
    (0x05C, "parse:pubkey.point"),  # QY
    (0x0A4, "parse:pubkey.reserved"),
    (0x006, "parse:reserved"),
    (0x000, "parse:version"),
    (0x41C, "sig1"),  # SIG1 R, low byte
    (0x41C + 47, "sig1"),  # SIG1 R, high byte
    (0x41C + 72, "sig1"),  # SIG1 S
    (0x41C + 72 + 47, "sig1"),
]
_FIRST_SIG_CHECK = {
    "cek": "sev.cek.signed_by_ask",
    "oca": "sev.oca.self_signed",
    "pek": "sev.pek.signed_by_oca",
    "pdh": "sev.pdh.signed_by_pek",
}


@pytest.mark.parametrize("gen", GENERATIONS)
@pytest.mark.parametrize("role", ["cek", "oca", "pek", "pdh"])
@pytest.mark.parametrize(("offset", "kind"), _SEV_FLIPS)
def test_sev_cert_bit_flip_named(gen: str, role: str, offset: int, kind: str) -> None:
    chain = dict(CHAINS[gen])
    chain[role] = _flip(chain[role], offset)
    reason = _reason(chain)
    if kind.startswith("parse:"):
        assert reason == f"parse.sev.{role}.{kind[6:]}"
    else:
        assert reason == _FIRST_SIG_CHECK[role]


@pytest.mark.parametrize("gen", GENERATIONS)
@pytest.mark.parametrize("offset", [0x624, 0x624 + 100, 0x624 + 72 + 10])
def test_pek_second_signature_flip(gen: str, offset: int) -> None:
    chain = dict(CHAINS[gen])
    chain["pek"] = _flip(chain["pek"], offset)
    assert _reason(chain) == "sev.pek.signed_by_cek"


@pytest.mark.parametrize("gen", GENERATIONS)
@pytest.mark.parametrize("offset", [0x41C + 200, 0x41C + 255, 0x41C + 0x1FF])
def test_cek_rsa_signature_flip(gen: str, offset: int) -> None:
    chain = dict(CHAINS[gen])
    chain["cek"] = _flip(chain["cek"], offset)
    assert _reason(chain) == "sev.cek.signed_by_ask"


@pytest.mark.parametrize("gen", GENERATIONS)
@pytest.mark.parametrize("role", ["ark", "ask"])
@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0x05, "key_id"), (0x40 + 300, "modulus"), (-1, "signature"), (-200, "signature")],
)
def test_ca_cert_flip(gen: str, role: str, offset: int, expected: str) -> None:
    """Against the pinned roots any change is a pin failure (or, in the ARK KEY_ID, an unknown
    generation); with roots made of the tampered certificate the signature check itself fails."""
    chain = dict(CHAINS[gen])
    tampered = _flip(chain[role], offset % len(chain[role]), 1)
    chain[role] = tampered
    reason = _reason(chain)
    if role == "ark" and expected == "key_id":
        assert reason == "sev.ark.generation"
        return
    assert reason == f"sev.{role}.pinned"
    # Trust the tampered bytes as "pinned": now the cryptographic check must catch it.
    ark, ask = parse_ca_cert(chain["ark"]), parse_ca_cert(chain["ask"])
    roots = SevRoots((SevRootPair(Generation(gen.capitalize()), ark, ask),))
    reason = _reason(chain, roots)
    if role == "ark":
        assert reason == "sev.ark.self_signed"
    else:
        assert reason == "sev.ask.signed_by_ark"


@pytest.mark.parametrize("role", ["cek", "oca", "pek", "pdh", "ark", "ask"])
def test_sweep_every_byte_region_rejected_and_named(role: str) -> None:
    """Flip one bit every 11 bytes over the whole certificate: always rejected, always naming the
    flipped certificate."""
    base = CHAINS["milan"]
    for offset in range(0, len(base[role]), 11):
        chain = dict(base)
        chain[role] = _flip(base[role], offset, offset % 8)
        reason = _reason(chain)
        if role == "ark" and 0x04 <= offset < 0x14:
            assert reason == "sev.ark.generation", offset
        else:
            assert f"sev.{role}." in reason, (offset, reason)


# ---------------------------------------------------------------------------- wrong roots / swaps


def test_wrong_generation_roots_rejected() -> None:
    only_milan = SevRoots((pinned_roots().for_generation(Generation.MILAN),))
    assert _reason(CHAINS["rome"], only_milan) == "sev.ark.generation"
    assert _reason(CHAINS["naples"], only_milan) == "sev.ark.generation"


def test_platform_chain_under_other_generation_roots_rejected() -> None:
    chain = dict(CHAINS["rome"])
    chain["ark"], chain["ask"] = CHAINS["milan"]["ark"], CHAINS["milan"]["ask"]
    assert _reason(chain) == "sev.cek.signed_by_ask"


def test_roots_pair_with_matching_key_id_but_other_bytes_rejected() -> None:
    pinned = pinned_roots()
    rome = pinned.for_generation(Generation.ROME)
    milan = pinned.for_generation(Generation.MILAN)
    impostor = SevRoots((SevRootPair(Generation.ROME, rome.ark, milan.ask),))
    assert _reason(CHAINS["rome"], impostor) == "sev.ask.pinned"


def test_swapped_certificates_fail_usage_checks() -> None:
    chain = dict(CHAINS["milan"])
    chain["pek"], chain["pdh"] = chain["pdh"], chain["pek"]
    assert _reason(chain) == "sev.pek.usage"
    chain = dict(CHAINS["milan"])
    chain["ark"], chain["ask"] = chain["ask"], chain["ark"]
    assert _reason(chain) == "sev.ark.usage"


def test_pdh_from_other_platform_rejected() -> None:
    chain = dict(CHAINS["rome"])
    chain["pdh"] = CHAINS["naples"]["pdh"]
    assert _reason(chain) == "sev.pdh.signed_by_pek"


def test_pek_without_cek_slot_rejected() -> None:
    pek = parse_sev_cert(CHAINS["milan"]["pek"])
    chain = dict(CHAINS["milan"])
    chain["pek"] = pek.with_signatures(pek.sig1).encode()
    with pytest.raises(VerificationError) as info:
        _verify(chain)
    assert info.value.check == "sev.pek.signed_by_cek" and "no signature slot" in info.value.detail


def test_verify_chain_accepts_parsed_certificates() -> None:
    chain = CHAINS["rome"]
    parsed = [parse_ca_cert(chain[r]) for r in ("ark", "ask")] + [
        parse_sev_cert(chain[r]) for r in ("cek", "oca", "pek", "pdh")
    ]
    assert verify_chain(*parsed, pinned=pinned_roots()).generation is Generation.ROME
    with pytest.raises(TypeError):
        verify_chain(*parsed, pinned={})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ malformed parsing


def _sev_with(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


PDH = CHAINS["milan"]["pdh"]
ARK = CHAINS["milan"]["ark"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (PDH[:-1], "sev.cert.size"),
        (PDH + b"\0", "sev.cert.size"),
        (_sev_with(PDH, 0, "<I", 2), "sev.cert.version"),
        (_sev_with(PDH, 8, "<I", 0x1000), "sev.cert.pubkey_usage"),
        (_sev_with(PDH, 8, "<I", 0x13), "sev.cert.pubkey_usage"),
        (_sev_with(PDH, 8, "<I", 0x1005), "sev.cert.pubkey_usage"),
        (_sev_with(PDH, 12, "<I", 0x4), "sev.cert.pubkey_algo"),
        (_sev_with(PDH, 12, "<I", 0x2), "sev.cert.pubkey_algo"),  # a PDH must be ECDH
        (_sev_with(PDH, 12, "<I", 0x0), "sev.cert.pubkey_algo"),
        (_sev_with(PDH, 0x10, "<I", 3), "sev.cert.pubkey.curve"),
        (_sev_with(PDH, 0x10, "<I", 1), "sev.cert.pubkey.qx"),  # P-256 with 48-byte coordinates
        (_sev_with(PDH, 0x14 + 50, "<B", 1), "sev.cert.pubkey.qx"),
        (_sev_with(PDH, 0x5C + 50, "<B", 1), "sev.cert.pubkey.qy"),
        (_sev_with(PDH, 0x414, "<I", 0x1003), "sev.cert.sig1.usage"),  # a PDH cannot sign
        (_sev_with(PDH, 0x414, "<I", 0x7), "sev.cert.sig1.usage"),
        (_sev_with(PDH, 0x418, "<I", 0x3), "sev.cert.sig1.algo"),  # ECDH is not a signature
        (_sev_with(PDH, 0x418, "<I", 0x9), "sev.cert.sig1.algo"),
        (_sev_with(PDH, 0x41C + 150, "<B", 1), "sev.cert.sig1.signature"),
        (_sev_with(PDH, 0x620, "<I", 0x2), "sev.cert.sig2.algo"),  # empty slot with an algo
        (_sev_with(PDH, 0x624 + 5, "<B", 1), "sev.cert.sig2.signature"),
    ],
)
def test_sev_cert_malformed(data: bytes, field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sev_cert(data)
    assert info.value.field == field and info.value.reason == f"parse.{field}"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (ARK[:0x3F], "sev.ca_cert.size"),
        (ARK[:-1], "sev.ca_cert.size"),
        (ARK + b"\0", "sev.ca_cert.size"),
        (_sev_with(ARK, 0, "<I", 0), "sev.ca_cert.version"),
        (_sev_with(ARK, 0x24, "<I", 0x1001), "sev.ca_cert.key_usage"),
        (_sev_with(ARK, 0x24, "<I", 0x12), "sev.ca_cert.key_usage"),
        (_sev_with(ARK, 0x30, "<B", 1), "sev.ca_cert.reserved"),
        (_sev_with(ARK, 0x38, "<I", 1024), "sev.ca_cert.pubexp_size"),
        (_sev_with(ARK, 0x3C, "<I", 2048), "sev.ca_cert.size"),
        (_sev_with(ARK, 0x3C, "<I", 3072), "sev.ca_cert.modulus_size"),
        (_sev_with(ARK, 0x40 + 512 + 511, "<B", 0), "sev.ca_cert.modulus"),  # top byte zero: short modulus
        (_sev_with(ARK, 0x40 + 512, "<B", 0x40), "sev.ca_cert.modulus"),  # even modulus
    ],
)
def test_ca_cert_malformed(data: bytes, field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_ca_cert(data)
    assert info.value.field == field


@pytest.mark.parametrize("bad", [None, "text", 42, [1, 2]])
def test_non_bytes_rejected(bad: object) -> None:
    with pytest.raises(ParseError):
        parse_sev_cert(bad)
    with pytest.raises(ParseError):
        parse_ca_cert(bad)


_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.binary(max_size=2200))
def test_random_bytes_only_parse_errors(data: bytes) -> None:
    for parse in (parse_sev_cert, parse_ca_cert):
        try:
            parse(data)
        except ParseError:
            pass


@_FAST
@given(st.sampled_from([(g, r) for g in GENERATIONS for r in ROLES]), st.data())
def test_truncations_only_parse_errors(which: tuple[str, str], data: st.DataObject) -> None:
    gen, role = which
    raw = CHAINS[gen][role]
    cut = data.draw(st.integers(0, len(raw) - 1))
    parse = parse_ca_cert if role in ("ark", "ask") else parse_sev_cert
    with pytest.raises(ParseError):
        parse(raw[:cut])


@_FAST
@given(
    st.sampled_from([(g, r) for g in GENERATIONS for r in ROLES]),
    st.lists(st.tuples(st.integers(0, 2083), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutations_parse_or_typed_error_and_round_trip(
    which: tuple[str, str], edits: list[tuple[int, int]]
) -> None:
    gen, role = which
    raw = bytearray(CHAINS[gen][role])
    for offset, value in edits:
        raw[offset % len(raw)] = value
    parse = parse_ca_cert if role in ("ark", "ask") else parse_sev_cert
    try:
        cert = parse(bytes(raw))
    except ParseError:
        return
    assert cert.encode() == bytes(raw)


# ------------------------------------------------------------------------------------------ GODH


def _challenge_cert() -> bytes:
    doc = json.loads((DATA / "kbs-types_sev_challenge.json").read_text())
    return bytes(doc["extra-params"]["start"]["cert"])


def test_godh_layout_matches_kbs_types_challenge() -> None:
    """The kbs-types fixture carries, inside the reserved part of its PUBKEY field (0x1BC..0x3CB),
    a stale copy of two signature slots (a PEK signature copied from the Milan PDH). With those
    reserved bytes zeroed, our encoder reproduces the fixture byte for byte from its key alone."""
    original = _challenge_cert()
    with pytest.raises(ParseError) as info:
        parse_sev_cert(original)
    assert info.value.field == "sev.cert.pubkey.reserved"
    assert "0x1bc" in info.value.detail
    cleaned = bytearray(original)
    cleaned[0xA4:0x414] = bytes(0x414 - 0xA4)
    cert = parse_sev_cert(bytes(cleaned))
    assert (cert.pubkey_usage, cert.pubkey_algo, cert.api_major, cert.api_minor) == (
        Usage.PDH,
        Algo.ECDH_SHA256,
        0,
        0,
    )
    assert all(slot.empty for slot in cert.signatures)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert godh_cert(key) == bytes(cleaned)
    # Only the stale junk differs from the fixture.
    diff = [i for i in range(SEV_CERT_SIZE) if original[i] != cleaned[i]]
    assert diff and 0x1BC <= min(diff) and max(diff) < 0x3CC


def test_godh_cert_fields() -> None:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    raw = godh_cert(key, 1, 51)
    cert = parse_sev_cert(raw)
    assert len(raw) == SEV_CERT_SIZE and cert.encode() == raw
    assert (cert.api_major, cert.api_minor, cert.pubkey_usage, cert.pubkey_algo) == (
        1,
        51,
        Usage.PDH,
        Algo.ECDH_SHA256,
    )
    assert cert.public_key().public_numbers() == key.public_numbers()
    assert struct.unpack_from("<II", raw, 0x414) == (0x1000, 0) and struct.unpack_from("<II", raw, 0x61C) == (
        0x1000,
        0,
    )
    with pytest.raises(ValueError):
        godh_cert(key, 256)
    with pytest.raises(TypeError):
        godh_cert(b"not a key")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- simulation


@pytest.fixture(scope="module")
def sim_milan() -> SimulatedAmdSev:
    return SimulatedAmdSev.generate("Milan")


@pytest.fixture(scope="module")
def sim_naples() -> SimulatedAmdSev:
    return SimulatedAmdSev.generate("Naples")


def test_simulated_chain_verifies(sim_milan: SimulatedAmdSev, sim_naples: SimulatedAmdSev) -> None:
    for sim, bits in ((sim_milan, 4096), (sim_naples, 2048)):
        verified = verify_chain(*sim.chain(), pinned=sim.roots)
        assert verified.generation is sim.generation
        assert verified.pdh_public_key.public_numbers() == sim.pdh_private_key.public_key().public_numbers()
        assert parse_ca_cert(sim.ark).modulus_bits == bits
        for role, raw in zip(ROLES, sim.chain(), strict=True):
            cert = parse_ca_cert(raw) if role in ("ark", "ask") else parse_sev_cert(raw)
            assert cert.encode() == raw
    cek = parse_sev_cert(sim_naples.cek)
    assert cek.sig1.algo is Algo.RSA_SHA256
    assert parse_sev_cert(sim_milan.cek).sig1.algo is Algo.RSA_SHA384


def test_simulated_tampered_pdh_rejected(sim_milan: SimulatedAmdSev) -> None:
    pdh = parse_sev_cert(sim_milan.pdh)
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    swapped = SevCert(
        pdh.version,
        pdh.api_major,
        pdh.api_minor,
        pdh.pubkey_usage,
        pdh.pubkey_algo,
        EcPubKey.of(other),
        pdh.sig1,
        pdh.sig2,
    )
    chain = list(sim_milan.chain())
    chain[5] = swapped.encode()
    with pytest.raises(VerificationError) as info:
        verify_chain(*chain, pinned=sim_milan.roots)
    assert info.value.check == "sev.pdh.signed_by_pek"
    chain[5] = _flip(sim_milan.pdh, 0x5)
    with pytest.raises(VerificationError) as info:
        verify_chain(*chain, pinned=sim_milan.roots)
    assert info.value.check == "sev.pdh.signed_by_pek"


def test_simulated_and_real_roots_do_not_mix(sim_milan: SimulatedAmdSev) -> None:
    with pytest.raises(VerificationError) as info:
        verify_chain(*sim_milan.chain(), pinned=pinned_roots())
    assert info.value.check == "sev.ark.generation"
    assert _reason(CHAINS["milan"], sim_milan.roots) == "sev.ark.generation"


def test_sim_request_chain_shape(sim_milan: SimulatedAmdSev) -> None:
    doc = sim_milan.sev_request_chain()
    assert bytes(doc["ca"]["ark"]) == sim_milan.ark and bytes(doc["sev"]["pdh"]) == sim_milan.pdh


# -------------------------------------------------------------------------------------------- KDS


def test_cek_url() -> None:
    chip = bytes(range(64))
    assert kds.cek_url(chip) == "https://kdsintf.amd.com/cek/id/" + chip.hex()
    assert kds.cek_url(chip, "http://localhost:8080/") == "http://localhost:8080/cek/id/" + chip.hex()
    for bad in (bytes(63), bytes(65), bytes(64)):
        with pytest.raises(ParseError) as info:
            kds.cek_url(bad)
        assert info.value.field == "kds.chip_id"
    with pytest.raises(ParseError):
        kds.cek_url(chip, "")


def test_ask_ark_bundle() -> None:
    ask, ark = CHAINS["rome"]["ask"], CHAINS["rome"]["ark"]
    for bundle in (ask + ark, ark + ask):
        got_ask, got_ark = kds.split_ask_ark(bundle)
        assert (got_ask.encode(), got_ark.encode()) == (ask, ark)
    with pytest.raises(ParseError):
        kds.split_ask_ark(ask + ask)
    with pytest.raises(ParseError):
        kds.split_ask_ark(ask)
    assert kds.ask_ark_url("Milan").endswith("ask_ark_milan.cert")
    with pytest.raises(ParseError):
        kds.ask_ark_url("Zen")


def test_fetch_cek_through_fetcher() -> None:
    chip = bytes([7]) * 64
    seen: list[str] = []

    class FakeFetcher:
        async def get(self, url: str) -> bytes:
            seen.append(url)
            return CHAINS["milan"]["cek"]

    cert = asyncio.run(kds.fetch_cek(FakeFetcher(), chip))  # type: ignore[arg-type]
    assert cert.pubkey_usage is Usage.CEK and seen == [kds.cek_url(chip)]
    with pytest.raises(ParseError) as info:
        kds.parse_cek(CHAINS["milan"]["pdh"])
    assert info.value.field == "sev.cek.pubkey_usage"


# -------------------------------------------------------------------------------------------- CLI


def _files(gen: str) -> list[str]:
    return [str(DATA / f"builtin-{gen}_{r}.cert") for r in ("ark", "ask")] + [
        str(DATA / f"{gen}_{r}.cert") for r in ("cek", "oca", "pek", "pdh")
    ]


@pytest.mark.parametrize("gen", ["naples", "rome"])
def test_cli_real_files_json(gen: str, capsys: pytest.CaptureFixture[str]) -> None:
    files = _files(gen)
    assert cli_main(["verify", "sev-chain", *reversed(files), "--json"]) == 0  # any order
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] is True and out["generation"] == gen.capitalize()
    assert set(out["checks"]) == set(ALL_CHECKS) and set(out["checks"].values()) == {"passed"}
    assert out["certificates"]["ark"]["key_id"] == parse_ca_cert(CHAINS[gen]["ark"]).key_id.hex()
    assert out["certificates"]["cek"]["api_version"] == "0.14"
    assert out["certificates"]["pek"]["signatures"] == [
        {"usage": "OCA", "algo": "ECDSA_SHA256"},
        {"usage": "CEK", "algo": "ECDSA_SHA256"},
    ]
    assert (
        out["certificates"]["pdh"]["usage"] == "PDH" and out["certificates"]["pdh"]["algo"] == "ECDH_SHA256"
    )


def test_cli_kbs_request_json_and_human(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["verify", "sev-chain", str(DATA / "kbs-types_sev_request.json")]) == 0
    out = capsys.readouterr().out
    assert "Milan" in out and "ok sev.pdh.signed_by_pek" in out and "api=1.51" in out


def test_cli_flipped_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _files("rome")
    flipped = tmp_path / "pek.cert"
    flipped.write_bytes(_flip(Path(files[4]).read_bytes(), 0x41C + 3))
    files[4] = str(flipped)
    assert cli_main(["verify", "sev-chain", *files, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out == {"verified": False, "check": "sev.pek.signed_by_oca", "detail": out["detail"]}


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _files("rome")
    assert cli_main(["verify", "sev-chain", *files[:5]]) == 2
    assert "PDH" in capsys.readouterr().err
    assert cli_main(["verify", "sev-chain", *files, files[5]]) == 2
    assert cli_main(["verify", "sev-chain", str(tmp_path / "missing.cert")]) == 2
    junk = tmp_path / "junk.json"
    junk.write_text('{"chain": {}}')
    assert cli_main(["verify", "sev-chain", str(junk)]) == 2


def test_ca_cert_encode_rejects_bad_signature_size() -> None:
    ark = parse_ca_cert(ARK)
    fields = {name: getattr(ark, name) for name in AmdCaCert.__slots__}  # type: ignore[attr-defined]
    fields["signature"] = b"\0"
    with pytest.raises(ValueError):
        AmdCaCert(**fields).encode()
