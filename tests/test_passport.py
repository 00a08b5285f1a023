"""Passport mode: a relying party verifying EAR tokens against the issuer's JWKS (library and CLI)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.cli import token as token_cli
from shared.ear import EarSigner, build_ear_claims
from shared.errors import ParseError, VerificationError
from shared.kbs.wire import b64url_decode, b64url_encode
from shared.passport import JwksSource, Passport, RelyingPartyPolicy, load_policy, verify_passport

NOW = 1_760_000_000
NONCE = bytes(range(32))
NONCE_B64 = base64.b64encode(NONCE).decode()
MEASUREMENT = "ab" * 48
TEE_KEY = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"}
EVIDENCE: dict[str, Any] = {
    "snp": {"snp.measurement": MEASUREMENT, "snp.vmpl": 0, "snp.debug": False},
    "runtime_data_claims": {"nonce": NONCE_B64, "tee-pubkey": TEE_KEY},
}


@pytest.fixture(scope="module")
def signer() -> EarSigner:
    return EarSigner(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def other() -> EarSigner:
    return EarSigner(ec.generate_private_key(ec.SECP256R1()))


def jwks_of(*signers: EarSigner) -> dict[str, Any]:
    return {"keys": [s.public_jwk() for s in signers]}


def make_token(signer: EarSigner, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "tee": "snp",
        "vector": {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2},
        "annotated_evidence": EVIDENCE,
        "policy_id": "default",
        "issued_at": NOW,
        "verifier_build": "remits test",
        "eat_nonce": NONCE_B64,
        "token_id": "jti-1",
    }
    kwargs.update(overrides)
    return signer.sign(build_ear_claims(**kwargs))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Issuer:
    """A JWKS endpoint whose key set the test changes, counting fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        self.down = False

    def __call__(self) -> bytes:
        self.fetches += 1
        if self.down:
            raise OSError("connection refused")
        return json.dumps(self.jwks).encode()


def source(issuer: Issuer, clock: Clock, **options: Any) -> JwksSource:
    return JwksSource(issuer, clock=clock, **options)


def check_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(VerificationError) as info:
        fn()
    return info.value.check


# --- verify_passport ----------------------------------------------------------------------------


def test_good_token(signer: EarSigner) -> None:
    passport = verify_passport(
        make_token(signer), JwksSource.from_keys(jwks_of(signer)), now=NOW + 10, nonce=NONCE
    )
    assert isinstance(passport, Passport)
    assert (passport.tee, passport.status, passport.kid) == ("snp", "affirming", signer.kid)
    assert passport.tee_claims["snp.measurement"] == MEASUREMENT
    assert passport.tee_pubkey == TEE_KEY
    assert passport.claims["eat_nonce"] == NONCE_B64 and passport.claims["jti"] == "jti-1"


@pytest.mark.parametrize("nonce", [NONCE, NONCE_B64])
def test_nonce_bytes_or_exact_string(signer: EarSigner, nonce: str | bytes) -> None:
    jwks = JwksSource.from_keys(jwks_of(signer))
    assert verify_passport(make_token(signer), jwks, now=NOW, nonce=nonce).tee == "snp"


def test_nonce_hex_spelling(signer: EarSigner) -> None:
    jwks = JwksSource.from_keys(jwks_of(signer))
    token = make_token(signer, eat_nonce=NONCE.hex().upper())
    assert verify_passport(token, jwks, now=NOW, nonce=NONCE).tee == "snp"


@pytest.mark.parametrize(
    ("eat_nonce", "nonce"),
    [
        (NONCE_B64, b"\x00" * 32),  # other bytes
        (NONCE_B64, NONCE.hex()),  # a string is compared exactly, not decoded
        (None, NONCE),  # no eat_nonce at all
    ],
)
def test_wrong_nonce(signer: EarSigner, eat_nonce: str | None, nonce: str | bytes) -> None:
    jwks = JwksSource.from_keys(jwks_of(signer))
    token = make_token(signer, eat_nonce=eat_nonce)
    assert check_of(lambda: verify_passport(token, jwks, now=NOW, nonce=nonce)) == "token.nonce"


def test_expired_and_leeway(signer: EarSigner) -> None:
    jwks = JwksSource.from_keys(jwks_of(signer))
    token = make_token(signer, lifetime_s=60)
    assert check_of(lambda: verify_passport(token, jwks, now=NOW + 60)) == "token.expired"
    assert verify_passport(token, jwks, now=NOW + 60, leeway_s=5).tee == "snp"


def test_unknown_kid_when_jwks_lacks_key(signer: EarSigner, other: EarSigner) -> None:
    jwks = JwksSource.from_keys(jwks_of(other))
    assert check_of(lambda: verify_passport(make_token(signer), jwks, now=NOW)) == "token.unknown_kid"


def test_same_kid_other_key_fails_signature(signer: EarSigner, other: EarSigner) -> None:
    impostor = {**other.public_jwk(), "kid": signer.kid}
    jwks = JwksSource.from_keys({"keys": [impostor]})
    assert check_of(lambda: verify_passport(make_token(signer), jwks, now=NOW)) == "token.signature_invalid"


def test_tampered_payload_and_signature(signer: EarSigner) -> None:
    jwks = JwksSource.from_keys(jwks_of(signer))
    header, payload, signature = make_token(signer).split(".")
    claims = json.loads(b64url_decode(payload))
    claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["snp"]["snp.measurement"] = "00" * 48
    forged = f"{header}.{b64url_encode(json.dumps(claims).encode())}.{signature}"
    assert check_of(lambda: verify_passport(forged, jwks, now=NOW)) == "token.signature_invalid"
    raw = bytearray(b64url_decode(signature))
    raw[5] ^= 1
    flipped = f"{header}.{payload}.{b64url_encode(bytes(raw))}"
    assert check_of(lambda: verify_passport(flipped, jwks, now=NOW)) == "token.signature_invalid"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "!!.x.y",
        f"{b64url_encode(b'[]')}.x.y",
        f"{b64url_encode(json.dumps({'alg': 'ES256'}).encode())}.x.y",
    ],
)
def test_malformed_header(signer: EarSigner, token: str) -> None:
    jwks = JwksSource.from_keys(jwks_of(signer))
    assert check_of(lambda: verify_passport(token, jwks, now=NOW)) == "token.malformed"


def test_wrong_profile(signer: EarSigner) -> None:
    jwks = JwksSource.from_keys(jwks_of(signer))
    assert check_of(
        lambda: verify_passport(make_token(signer), jwks, now=NOW, expected_profile="tag:other")
    ) == ("token.profile")


# --- policy -------------------------------------------------------------------------------------


def test_policy_passes(signer: EarSigner) -> None:
    policy = RelyingPartyPolicy(
        tees=frozenset({"snp", "tdx"}),
        claims={"snp.measurement": frozenset({MEASUREMENT.upper()}), "snp.vmpl": frozenset({"0"})},
        max_age_s=60,
    )
    jwks = JwksSource.from_keys(jwks_of(signer))
    assert verify_passport(make_token(signer), jwks, now=NOW + 60, policy=policy).tee == "snp"


@pytest.mark.parametrize(
    ("vector", "policy", "check"),
    [
        ({"hardware": 2, "executables": 33}, RelyingPartyPolicy(), "token.policy.status"),
        ({"hardware": 2, "executables": 96}, RelyingPartyPolicy(min_status="warning"), "token.policy.status"),
        ({}, RelyingPartyPolicy(min_status="warning"), "token.policy.status"),  # "none": no claims at all
        (None, RelyingPartyPolicy(tees=frozenset({"tdx"})), "token.policy.tee"),
        (None, RelyingPartyPolicy(claims={"snp.measurement": frozenset({"cd" * 48})}), "token.policy.claim"),
        (None, RelyingPartyPolicy(claims={"snp.host_data": frozenset({"00"})}), "token.policy.claim"),
        (None, RelyingPartyPolicy(max_age_s=59), "token.policy.max_age"),
    ],
)
def test_policy_failures(
    signer: EarSigner, vector: dict[str, int] | None, policy: RelyingPartyPolicy, check: str
) -> None:
    token = make_token(signer) if vector is None else make_token(signer, vector=vector)
    jwks = JwksSource.from_keys(jwks_of(signer))
    with pytest.raises(VerificationError) as info:
        verify_passport(token, jwks, now=NOW + 60, policy=policy)
    assert info.value.check == check
    if check == "token.policy.claim":
        assert next(iter(policy.claims)) in info.value.detail


@pytest.mark.parametrize(
    "vector",
    [
        {"hardware": 2, "executables": 33},  # warning
        {"hardware": 2, "executables": 96},  # contraindicated
        {},  # none: no claims at all
    ],
)
def test_no_policy_means_the_default_policy(signer: EarSigner, vector: dict[str, int]) -> None:
    # Without a policy a relying party still gets the default one: an affirming status.
    assert RelyingPartyPolicy().min_status == "affirming"
    jwks = JwksSource.from_keys(jwks_of(signer))
    with pytest.raises(VerificationError) as info:
        verify_passport(make_token(signer, vector=vector), jwks, now=NOW)
    assert info.value.check == "token.policy.status"
    assert "'affirming'" in info.value.detail
    assert verify_passport(make_token(signer), jwks, now=NOW).status == "affirming"


def test_verifier_is_kept_per_key_and_renewed_with_the_keys(signer: EarSigner) -> None:
    issuer, clock = Issuer(jwks_of(signer)), Clock()
    jwks = source(issuer, clock, ttl_s=60)
    first = jwks.verifier(signer.kid)
    assert jwks.verifier(signer.kid) is first
    clock.t += 61  # expired: the refresh imports the keys anew, so the verifier is rebuilt
    assert jwks.verifier(signer.kid) is not first
    assert verify_passport(make_token(signer), jwks, now=NOW).kid == signer.kid


def test_warning_status_accepted_by_warning_policy(signer: EarSigner) -> None:
    token = make_token(signer, vector={"hardware": 2, "executables": 33})
    jwks = JwksSource.from_keys(jwks_of(signer))
    passport = verify_passport(token, jwks, now=NOW, policy=RelyingPartyPolicy(min_status="warning"))
    assert passport.status == "warning"


def test_load_policy() -> None:
    policy = load_policy(
        json.dumps(
            {"min_status": "warning", "tees": ["snp"], "claims": {"snp.vmpl": ["0"]}, "max_age_s": 30}
        ).encode()
    )
    assert policy == RelyingPartyPolicy(
        min_status="warning", tees=frozenset({"snp"}), claims={"snp.vmpl": frozenset({"0"})}, max_age_s=30
    )
    assert load_policy(b"{}") == RelyingPartyPolicy()


@pytest.mark.parametrize(
    ("doc", "reason", "needle"),
    [
        (b"not json", "config.passport_policy", "JSON"),
        (b"[]", "config.passport_policy", "object"),
        (
            b'{"min_status": "affirming", "max_age": 5, "tee": []}',
            "config.passport_policy",
            "'max_age', 'tee'",
        ),
        (b'{"min_status": "none"}', "config.passport_policy.min_status", ""),
        (b'{"tees": "snp"}', "config.passport_policy.tees", ""),
        (b'{"claims": {"snp.vmpl": [0]}}', "config.passport_policy.claims.snp.vmpl", ""),
        (b'{"claims": []}', "config.passport_policy.claims", ""),
        (b'{"max_age_s": -1}', "config.passport_policy.max_age_s", ""),
        (b'{"max_age_s": true}', "config.passport_policy.max_age_s", ""),
    ],
)
def test_load_policy_errors(doc: bytes, reason: str, needle: str) -> None:
    with pytest.raises(ParseError) as info:
        load_policy(doc)
    assert info.value.reason == reason
    assert needle in info.value.detail


# --- the JWKS cache -----------------------------------------------------------------------------


def test_unknown_kid_refreshes_once_then_succeeds(signer: EarSigner, other: EarSigner) -> None:
    issuer, clock = Issuer(jwks_of(other)), Clock()
    jwks = source(issuer, clock)
    assert jwks.key(other.kid) is not None and issuer.fetches == 1
    issuer.jwks = jwks_of(other, signer)  # the issuer rotates a key in
    clock.t += 6
    assert verify_passport(make_token(signer), jwks, now=NOW).kid == signer.kid
    assert issuer.fetches == 2
    verify_passport(make_token(signer), jwks, now=NOW)
    assert issuer.fetches == 2  # now cached


def test_unknown_kid_refresh_is_rate_limited(signer: EarSigner, other: EarSigner) -> None:
    issuer, clock = Issuer(jwks_of(other)), Clock()
    jwks = source(issuer, clock, min_refresh_s=5)
    jwks.key(other.kid)
    clock.t += 6
    assert check_of(lambda: jwks.key("made-up-1")) == "token.unknown_kid"
    assert issuer.fetches == 2
    clock.t += 4  # within min_refresh_s of the last fetch
    assert check_of(lambda: jwks.key("made-up-2")) == "token.unknown_kid"
    issuer.jwks = jwks_of(other, signer)
    assert check_of(lambda: jwks.key(signer.kid)) == "token.unknown_kid"
    assert issuer.fetches == 2
    clock.t += 1
    assert jwks.key(signer.kid) is not None and issuer.fetches == 3


def test_expired_cache_is_refreshed(other: EarSigner, signer: EarSigner) -> None:
    issuer, clock = Issuer(jwks_of(other)), Clock()
    jwks = source(issuer, clock, ttl_s=300)
    jwks.key(other.kid)
    clock.t += 299
    jwks.key(other.kid)
    assert issuer.fetches == 1
    issuer.jwks = jwks_of(signer)  # the old key is rotated out
    clock.t += 1
    assert jwks.key(signer.kid) is not None and issuer.fetches == 2
    assert check_of(lambda: jwks.key(other.kid)) == "token.unknown_kid"


def test_fetch_failure_keeps_usable_cache(other: EarSigner) -> None:
    issuer, clock = Issuer(jwks_of(other)), Clock()
    jwks = source(issuer, clock, ttl_s=300)
    jwks.key(other.kid)
    issuer.down = True
    clock.t += 10
    assert check_of(lambda: jwks.key("rotated-in")) == "token.unknown_kid"  # refresh failed, cache kept
    assert issuer.fetches == 2
    assert jwks.key(other.kid) is not None
    clock.t += 300  # expired, and the issuer still down: an old key is not trusted forever
    assert check_of(lambda: jwks.key(other.kid)) == "token.jwks_unavailable"
    assert check_of(lambda: jwks.key(other.kid)) == "token.jwks_unavailable"
    assert issuer.fetches == 3  # the retry waits min_refresh_s
    issuer.down = False
    clock.t += 5
    assert jwks.key(other.kid) is not None and issuer.fetches == 4


@pytest.mark.parametrize("body", [None, b"<html>", b'{"nokeys": []}'])
def test_jwks_unavailable_without_cache(body: bytes | None) -> None:
    def fetch() -> bytes:
        if body is None:
            raise OSError("unreachable")
        return body

    assert check_of(lambda: JwksSource(fetch).key("k")) == "token.jwks_unavailable"


def test_only_p256_signing_keys_are_taken(signer: EarSigner, other: EarSigner) -> None:
    good = signer.public_jwk()
    jwks = JwksSource.from_keys(
        {
            "keys": [
                {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
                {**other.public_jwk(), "crv": "P-384", "kid": "p384"},
                {**other.public_jwk(), "use": "enc", "kid": "enc"},
                {k: v for k, v in other.public_jwk().items() if k != "kid"},
                {**other.public_jwk(), "x": good["y"], "kid": "off-curve"},
                "junk",
                good,
            ]
        }
    )
    assert jwks.key(signer.kid).public_numbers() == signer_public(signer).public_numbers()
    for kid in ("rsa", "p384", "enc", "off-curve", other.kid):
        assert check_of(lambda kid=kid: jwks.key(kid)) == "token.unknown_kid"


def signer_public(signer: EarSigner) -> ec.EllipticCurvePublicKey:
    jwk = signer.public_jwk()
    x, y = (int.from_bytes(b64url_decode(jwk[c]), "big") for c in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def test_from_file_and_url_schemes(tmp_path: Path, signer: EarSigner) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_of(signer)))
    assert JwksSource.from_file(path).key(signer.kid) is not None
    with pytest.raises(ValueError):
        JwksSource.from_url(f"file://{path}")
    with pytest.raises(ParseError):
        JwksSource.from_keys({"keys": "none"})


def test_concurrent_lookups_fetch_once(signer: EarSigner) -> None:
    issuer = Issuer(jwks_of(signer))
    jwks = JwksSource(issuer)
    threads = [threading.Thread(target=jwks.key, args=(signer.kid,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert issuer.fetches == 1


# --- CLI ----------------------------------------------------------------------------------------


AT = datetime.fromtimestamp(NOW + 10, UTC).isoformat()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    parser = argparse.ArgumentParser(prog="remits")
    token_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc = args.run(args)
    out, err = capsys.readouterr()
    try:
        doc = json.loads(out)
    except ValueError:
        doc = out
    return rc, doc, err


@pytest.fixture
def files(tmp_path: Path, signer: EarSigner) -> dict[str, str]:
    out = {
        "jwks": tmp_path / "jwks.json",
        "token": tmp_path / "token.jwt",
        "policy": tmp_path / "policy.json",
        "bad_policy": tmp_path / "bad.json",
    }
    out["jwks"].write_text(json.dumps(jwks_of(signer)))
    out["token"].write_text(make_token(signer) + "\n")
    out["policy"].write_text(json.dumps({"tees": ["snp"], "claims": {"snp.measurement": [MEASUREMENT]}}))
    out["bad_policy"].write_text(json.dumps({"tee": ["snp"]}))
    return {k: str(v) for k, v in out.items()}


def test_cli_verified_from_file(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "verify", files["token"], "--jwks", files["jwks"], "--nonce", NONCE.hex()]
    rc, doc, _ = run_cli([*argv, "--at", AT, "--json", "--policy", files["policy"]], capsys)
    assert rc == 0
    assert doc["verified"] is True and doc["tee"] == "snp" and doc["status"] == "affirming"
    assert (doc["iat"], doc["exp"], doc["nonce"]) == (NOW, NOW + 300, NONCE_B64)
    assert doc["tee_pubkey"] == TEE_KEY and doc["claims"]["snp.measurement"] == MEASUREMENT


def test_cli_text_and_literal_nonce(
    files: dict[str, str], signer: EarSigner, capsys: pytest.CaptureFixture[str]
) -> None:
    token = make_token(signer)
    rc, out, _ = run_cli(
        ["token", "verify", token, "--jwks", files["jwks"], "--nonce", NONCE_B64, "--at", AT], capsys
    )
    assert rc == 0 and "verified: snp token, status affirming" in out and signer.kid in out


def test_cli_stdin(
    files: dict[str, str],
    signer: EarSigner,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(make_token(signer) + "\n"))
    rc, doc, _ = run_cli(["token", "verify", "-", "--jwks", files["jwks"], "--at", AT, "--json"], capsys)
    assert rc == 0 and doc["kid"] == signer.kid


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        (["--nonce", "00" * 32], "token.nonce"),
        (["--at", datetime.fromtimestamp(NOW + 301, UTC).isoformat()], "token.expired"),
    ],
)
def test_cli_failed_check(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], extra: list[str], check: str
) -> None:
    rc, doc, _ = run_cli(
        ["token", "verify", files["token"], "--jwks", files["jwks"], "--at", AT, *extra], capsys
    )
    assert rc == 1 and doc["verified"] is False and doc["check"] == check


def test_cli_without_policy_refuses_a_non_affirming_token(
    files: dict[str, str], signer: EarSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for vector in ({"hardware": 2, "executables": 96}, {"hardware": 2, "executables": 33}):
        token = tmp_path / "bad.jwt"
        token.write_text(make_token(signer, vector=vector))
        rc, doc, _ = run_cli(["token", "verify", str(token), "--jwks", files["jwks"], "--at", AT, "--json"], capsys)
        assert rc == 1 and doc["verified"] is False and doc["check"] == "token.policy.status"
    # A warning token passes only when the relying party's policy lowers the minimum explicitly.
    warning = tmp_path / "warning.json"
    warning.write_text(json.dumps({"min_status": "warning"}))
    rc, doc, _ = run_cli(
        ["token", "verify", str(token), "--jwks", files["jwks"], "--at", AT, "--json", "--policy", str(warning)],
        capsys,
    )
    assert rc == 0 and doc["verified"] is True and doc["status"] == "warning"


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "verify", "missing.jwt", "--jwks", "{jwks}"],
        ["token", "verify", "{token}", "--jwks", "missing.json"],
        ["token", "verify", "{token}", "--jwks", "{token}"],  # not a JWKS
        ["token", "verify", "{token}", "--jwks", "{jwks}", "--policy", "{bad_policy}"],
        ["token", "verify", "{token}", "--jwks", "{jwks}", "--at", "yesterday"],
        ["token", "verify", "{token}", "--issuer", "ftp://example.com"],
    ],
)
def test_cli_usage_errors(files: dict[str, str], capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, _, err = run_cli([a.format(**files) for a in argv], capsys)
    assert rc == 2 and "error" in json.loads(err)


def test_cli_jwks_and_issuer_are_exclusive(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["token", "verify", files["token"]],
        ["token", "verify", files["token"], "--jwks", files["jwks"], "--issuer", "http://x"],
    ):
        with pytest.raises(SystemExit) as info:
            run_cli(argv, capsys)
        assert info.value.code == 2


@pytest.fixture
def issuer_url(signer: EarSigner) -> Iterator[str]:
    body = json.dumps(jwks_of(signer)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/.well-known/jwks.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_cli_issuer(files: dict[str, str], issuer_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, _ = run_cli(
        ["token", "verify", files["token"], "--issuer", issuer_url + "/", "--at", AT, "--json"], capsys
    )
    assert rc == 0 and doc["verified"] is True
    rc, doc, _ = run_cli(
        [
            "token",
            "verify",
            files["token"],
            "--jwks",
            issuer_url + "/.well-known/jwks.json",
            "--at",
            AT,
            "--json",
        ],
        capsys,
    )
    assert rc == 0 and doc["verified"] is True


def test_cli_issuer_unreachable_or_wrong(
    files: dict[str, str], issuer_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The wrong path answers 404: no JWKS, a failed check rather than a usage error.
    rc, doc, _ = run_cli(
        ["token", "verify", files["token"], "--jwks", issuer_url + "/nope", "--at", AT], capsys
    )
    assert rc == 1 and doc["check"] == "token.jwks_unavailable"
    rc, doc, _ = run_cli(
        ["token", "verify", files["token"], "--issuer", "http://127.0.0.1:9", "--at", AT], capsys
    )
    assert rc == 1 and doc["check"] == "token.jwks_unavailable"


def test_cli_issuer_without_the_key(
    files: dict[str, str],
    issuer_url: str,
    other: EarSigner,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token_file = tmp_path / "other.jwt"
    token_file.write_text(make_token(other))
    rc, doc, _ = run_cli(["token", "verify", str(token_file), "--issuer", issuer_url, "--at", AT], capsys)
    assert rc == 1 and doc["check"] == "token.unknown_kid"
