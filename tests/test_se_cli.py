"""`remits verify se`: exit codes 0/1/2 with evidence JSON and exchange files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services.cli import verify_se
from services.demo.se_sim import SimulatedHost, SimulatedUltravisor, random_image_tags
from shared.platforms.se.abi import parse_se_header
from shared.platforms.se.arcb import build_arcb
from shared.platforms.se.evidence import encode_evidence, encode_exchange_response

DATA = Path(__file__).parent / "data" / "se"
HDR = DATA / "pv_exp_secure_guest.hdr"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remits verify")
    verify_se.add_parsers(parser.add_subparsers(dest="tee", required=True))
    return parser


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = _parser().parse_args(argv)
    code = args.run(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def host() -> SimulatedHost:
    return SimulatedHost()


def _setup(
    tmp_path: Path, host: SimulatedHost, *, image_in_state: bool, tags=None, **uv: object
) -> tuple[Path, bytes, object]:
    expected = parse_se_header(HDR.read_bytes())
    arcb, state = build_arcb([host.public_key])
    doc = state.to_json()
    if image_in_state:
        doc["image_tags"] = expected.hex()
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps(doc))
    response = SimulatedUltravisor(host, tags or expected, **uv).perform(arcb, b"nonce-binding")  # type: ignore[arg-type]
    return state_path, arcb, response


def test_verified_json_with_hdr(
    tmp_path: Path, host: SimulatedHost, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path, _, response = _setup(tmp_path, host, image_in_state=False)
    (tmp_path / "ev.json").write_bytes(encode_evidence(response))  # type: ignore[arg-type]
    code, out, _ = _run(
        [
            "se",
            "--request-state",
            str(state_path),
            "--response",
            str(tmp_path / "ev.json"),
            "--hdr",
            str(HDR),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert result["verified"] is True
    assert result["se.tag"] == "92309d4589b9a85b427f8753171d1520"
    assert result["se.attestation_phkh"] == host.host_key_hash.hex()
    assert result["se.user_data"] == b"nonce-binding".hex()
    assert result["se.version"] == 256


def test_verified_exchange_file_tags_in_state(
    tmp_path: Path, host: SimulatedHost, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path, arcb, response = _setup(tmp_path, host, image_in_state=True)
    (tmp_path / "ex.bin").write_bytes(encode_exchange_response(arcb, response))  # type: ignore[arg-type]
    code, out, _ = _run(
        ["se", "--request-state", str(state_path), "--response", str(tmp_path / "ex.bin")], capsys
    )
    assert code == 0
    assert out.startswith("verified: IBM Secure Execution")
    assert "se.tag = 92309d4589b9a85b427f8753171d1520" in out


def test_failed_check_wrong_image(
    tmp_path: Path, host: SimulatedHost, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path, _, response = _setup(tmp_path, host, image_in_state=True, tags=random_image_tags(b"x"))
    (tmp_path / "ev.json").write_bytes(encode_evidence(response))  # type: ignore[arg-type]
    code, out, _ = _run(
        ["se", "--request-state", str(state_path), "--response", str(tmp_path / "ev.json")], capsys
    )
    assert code == 1
    result = json.loads(out)
    assert result["verified"] is False
    assert result["check"] == "se.measurement"


def test_failed_check_other_request_in_exchange(
    tmp_path: Path, host: SimulatedHost, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path, _, response = _setup(tmp_path, host, image_in_state=True)
    other_arcb, _ = build_arcb([host.public_key])
    (tmp_path / "ex.bin").write_bytes(encode_exchange_response(other_arcb, response))  # type: ignore[arg-type]
    code, out, _ = _run(
        ["se", "--request-state", str(state_path), "--response", str(tmp_path / "ex.bin")], capsys
    )
    assert code == 1
    assert json.loads(out)["check"] == "se.arcb"


def test_failed_parse_of_evidence(
    tmp_path: Path, host: SimulatedHost, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path, _, _ = _setup(tmp_path, host, image_in_state=True)
    (tmp_path / "ev.json").write_text(json.dumps({"measurement": "AAAA", "cuid": "AAAA"}))
    code, out, _ = _run(
        ["se", "--request-state", str(state_path), "--response", str(tmp_path / "ev.json")], capsys
    )
    assert code == 1
    assert json.loads(out)["check"] == "parse.se.evidence.measurement"


def test_usage_errors(tmp_path: Path, host: SimulatedHost, capsys: pytest.CaptureFixture[str]) -> None:
    state_path, _, response = _setup(tmp_path, host, image_in_state=False)
    ev = tmp_path / "ev.json"
    ev.write_bytes(encode_evidence(response))  # type: ignore[arg-type]
    # No expected image anywhere.
    code, out, err = _run(["se", "--request-state", str(state_path), "--response", str(ev)], capsys)
    assert code == 2 and out == ""
    assert "no expected image" in json.loads(err)["error"]
    # Missing file.
    code, _, err = _run(["se", "--request-state", str(tmp_path / "nope"), "--response", str(ev)], capsys)
    assert code == 2 and "cannot read" in json.loads(err)["error"]
    # Malformed state.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"measurement_key": "00"}))
    code, _, err = _run(["se", "--request-state", str(bad), "--response", str(ev), "--hdr", str(HDR)], capsys)
    assert code == 2 and "request_state" in json.loads(err)["error"]
    # A header that is not one.
    code, _, err = _run(
        ["se", "--request-state", str(state_path), "--response", str(ev), "--hdr", str(ev)], capsys
    )
    assert code == 2 and "se_header" in json.loads(err)["error"]


def test_tees() -> None:
    assert verify_se.TEES == ("se",)
