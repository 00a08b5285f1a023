"""`remits verify tdx|sgx` (services.cli.verify_dcap.py): exit codes and output on every real vector
offline, outside the validity window, on usage errors, with CCEL replay, with CoCo evidence JSON,
and against a LocalPcs serving real or simulated collateral."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.cli.verify_dcap import b64decode_any, decode_evidence, main
from services.demo.local_pcs import LocalPcs
from services.demo.tdx_sim import SimEvent, SimulatedIntel, SimulatedTdxPlatform, ccel_event_log

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "tdx"
QUOTES = DATA / "quotes"
CASES = sorted(p.name for p in QUOTES.iterdir())
CCEL_CASE = "gotdx_cos113_ccel"
MR_TD_AT = 0x30 + 136


def expected(case: str) -> dict[str, Any]:
    return json.loads((QUOTES / case / "expected.json").read_text())


def has_crls(case: str) -> bool:
    directory = QUOTES / case / "collateral"
    return (directory / "pck_crl.der").exists() and (directory / "root_ca_crl.der").exists()


def offline(case: str, *extra: str) -> list[str]:
    """argv verifying ``case`` with its own collateral at its verify_at."""
    argv = [
        "verify",
        expected(case)["tee"],
        str(QUOTES / case / "quote.bin"),
        "--collateral",
        str(QUOTES / case / "collateral"),
        "--at",
        expected(case)["verify_at"],
        "--json",
    ]
    return argv + ([] if has_crls(case) else ["--allow-missing-crls"]) + list(extra)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    """In process, through the module's own parser."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else {}


def remits(*argv: str) -> subprocess.CompletedProcess[str]:
    """As a user runs it: a separate process, ``python -m services.cli.verify_dcap``."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.verify_dcap", *argv], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


# -- offline, real vectors ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_real_vector_verifies_at_its_time(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(offline(case), capsys)
    want = expected(case)
    tee = want["tee"]
    assert code == 0, out
    assert out["verified"] is True
    assert out[f"{tee}.tcb_status"] == want["tcb_status"]
    assert out[f"{tee}.fmspc"] == want["fmspc"]
    assert out[f"{tee}.crl_checked"] is has_crls(case)
    if tee == "tdx":
        assert out["tdx.quote.body.mr_td"] == want["mr_td"]
        assert out["tdx.quote.body.report_data"] == want["report_data"]
        assert out["tdx.eventlog.replayed"] is False
    start, end = out[f"{tee}.valid_window"]
    assert start <= out["verified_at"] <= end


def test_the_process_entry_point_and_human_output() -> None:
    done = remits(*offline(CCEL_CASE)[:-1])  # without --json
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("verified: TDX quote v4, TCB UpToDate")
    assert expected(CCEL_CASE)["mr_td"] in done.stdout


def test_missing_crls_fail_closed(capsys: pytest.CaptureFixture[str]) -> None:
    case = "trustee_tdx_quote_6"
    argv = [a for a in offline(case) if a != "--allow-missing-crls"]
    code, out = run(argv, capsys)
    assert code == 1 and out["verified"] is False
    assert out["check"] == "tdx.root_crl_signature" and "--allow-missing-crls" in out["detail"]


@pytest.mark.parametrize(
    ("case", "at", "check"),
    [
        ("dcapqvl_tdx_quote", "2026-11-26T00:00:00Z", "tdx.collateral_fresh_at_time"),
        ("dcapqvl_sgx_quote", "2026-11-26T00:00:00Z", "tdx.collateral_fresh_at_time"),
        ("gotdx_spr_e4_v4", "2053-07-01T01:00:00Z", "tdx.pck_chain_valid_at_time"),
        ("trustee_tdx_quote_4", "2019-01-01T00:00:00+00:00", "tdx.pck_chain_valid_at_time"),
    ],
)
def test_outside_the_window_exits_1_with_the_check(
    case: str, at: str, check: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = offline(case)
    argv[argv.index("--at") + 1] = at
    code, out = run(argv, capsys)
    assert code == 1
    assert out == {"verified": False, "check": check, "detail": out["detail"]} and out["detail"]


def _negative_quotes() -> list[dict[str, Any]]:
    vectors = json.loads((DATA / "negative" / "expected.json").read_text())["vectors"]
    return [v for v in vectors if v["kind"] == "quote"]


@pytest.mark.parametrize("vector", _negative_quotes(), ids=lambda v: v["id"])
def test_mutated_real_quotes_fail_with_a_listed_check(vector: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    case = vector["derived_from"].split("/")[1]
    argv = offline(case)
    argv[2] = str(DATA / "negative" / vector["file"])
    argv[argv.index("--at") + 1] = vector["inputs"]["verify_at"]
    code, out = run(argv, capsys)
    assert code == 1
    if vector["must_fail"] == ["parse"]:
        assert out["check"].startswith("parse.quote")
    else:
        assert out["check"] in {f"tdx.{name}" for name in vector["must_fail"]}


def test_wrong_subcommand_for_the_quote(capsys: pytest.CaptureFixture[str]) -> None:
    argv = offline("dcapqvl_sgx_quote")
    argv[1] = "tdx"
    code, out = run(argv, capsys)
    assert (code, out["check"]) == (1, "tdx.quote.header.tee_type")


def test_collateral_of_another_platform(capsys: pytest.CaptureFixture[str]) -> None:
    argv = offline("dcapqvl_tdx_quote")
    argv[argv.index("--collateral") + 1] = str(QUOTES / "trustee_tdx_quote_4" / "collateral")
    argv[argv.index("--at") + 1] = "2025-07-04T10:16:31Z"
    code, out = run(argv, capsys)
    assert code == 1 and out["check"].startswith("tdx.")


# -- usage -------------------------------------------------------------------------------------


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = offline(CCEL_CASE)
    bad_quote = list(base)
    bad_quote[2] = str(tmp_path / "no-such-quote")
    bad_time = list(base)
    bad_time[bad_time.index("--at") + 1] = "yesterday"
    no_dir = list(base)
    no_dir[no_dir.index("--collateral") + 1] = str(tmp_path / "missing")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "tcb_info.json").write_bytes((QUOTES / CCEL_CASE / "collateral" / "tcb_info.json").read_bytes())
    incomplete = list(base)
    incomplete[incomplete.index("--collateral") + 1] = str(partial)
    for argv in (
        bad_quote,
        bad_time,
        no_dir,
        incomplete,
        [*base, "--eventlog", str(tmp_path / "no-such-log")],
        [*base, "--root", str(tmp_path / "no-such-root")],
        ["verify", "tdx"],  # argparse: no quote
        ["verify", "sgx", str(QUOTES / "dcapqvl_sgx_quote" / "quote.bin"), "--eventlog", "x"],  # SGX has no RTMRs
        ["verify", "snp", "x"],
    ):
        code, out = run(argv, capsys)
        assert code == 2 and out == {}, argv
    done = remits("verify", "tdx", str(tmp_path / "no-such-quote"))
    assert done.returncode == 2 and "error" in json.loads(done.stderr)


def test_malformed_collateral_is_a_check_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    for f in (QUOTES / CCEL_CASE / "collateral").iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    (directory / "tcb_info.json").write_text('{"tcbInfo": {}, "signature": "00"}')
    argv = offline(CCEL_CASE)
    argv[argv.index("--collateral") + 1] = str(directory)
    code, out = run(argv, capsys)
    assert code == 1 and out["check"].startswith("parse.tcb_info")


# -- event log ---------------------------------------------------------------------------------


def test_ccel_event_log_replays(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(offline(CCEL_CASE, "--eventlog", str(QUOTES / CCEL_CASE / "ccel" / "ccel_data.dat")), capsys)
    assert code == 0, out
    assert out["tdx.eventlog.replayed"] is True and out["tdx.eventlog.events"] > 0


@pytest.mark.parametrize("log", ["CCEL_data", "CCEL_data_ovmf"])
def test_an_unbound_event_log_fails_rtmr_replay(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = offline("trustee_tdx_quote_4", "--eventlog", str(DATA / "negative" / "ccel_not_bound" / log))
    code, out = run(argv, capsys)
    assert (code, out["check"]) == (1, "tdx.rtmr_replay")


def test_the_ccel_table_is_not_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(offline(CCEL_CASE, "--eventlog", str(QUOTES / CCEL_CASE / "ccel" / "ccel_table.dat")), capsys)
    assert code == 1 and out["check"].startswith("parse.ccel")


# -- evidence shapes ---------------------------------------------------------------------------


def _evidence_file(tmp_path: Path, quote: bytes, log: bytes | None, *, urlsafe: bool) -> Path:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode

    def text(data: bytes) -> str:
        encoded = encode(data).decode()
        return encoded.rstrip("=") if urlsafe else encoded

    path = tmp_path / f"evidence-{'url' if urlsafe else 'std'}.json"
    path.write_text(json.dumps({"cc_eventlog": text(log) if log is not None else None, "quote": text(quote)}))
    return path


@pytest.mark.parametrize("urlsafe", [False, True])
def test_coco_evidence_json(urlsafe: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quote = (QUOTES / CCEL_CASE / "quote.bin").read_bytes()
    log = (QUOTES / CCEL_CASE / "ccel" / "ccel_data.dat").read_bytes()
    argv = offline(CCEL_CASE)
    argv[2] = str(_evidence_file(tmp_path, quote, log, urlsafe=urlsafe))
    code, out = run(argv, capsys)
    assert code == 0, out
    assert out["tdx.eventlog.replayed"] is True  # the carried log is replayed too
    argv[2] = str(_evidence_file(tmp_path, quote, None, urlsafe=urlsafe))
    code, out = run(argv, capsys)
    assert code == 0 and out["tdx.eventlog.replayed"] is False
    unbound = (DATA / "negative" / "ccel_not_bound" / "CCEL_data_ovmf").read_bytes()
    argv[2] = str(_evidence_file(tmp_path, quote, unbound, urlsafe=urlsafe))
    code, out = run(argv, capsys)
    assert (code, out["check"]) == (1, "tdx.rtmr_replay")


def test_evidence_decoding() -> None:
    data = bytes(range(256)) * 3
    for encoded in (
        base64.b64encode(data).decode(),
        base64.urlsafe_b64encode(data).decode(),
        base64.urlsafe_b64encode(data).decode().rstrip("="),
        "\n".join(base64.b64encode(data).decode()[i : i + 76] for i in range(0, 1024, 76)),
    ):
        assert b64decode_any(encoded, "x") == data
    quote = (QUOTES / CCEL_CASE / "quote.bin").read_bytes()
    assert decode_evidence(quote).quote == quote
    assert decode_evidence(quote.hex().encode() + b"\n").quote == quote


@pytest.mark.parametrize(
    "body",
    ['{"quote": "***"}', '{"quote": 5}', '{"cc_eventlog": 1, "quote": "AAAA"}', "{not json", '{"cc_eventlog": null}'],
)
def test_malformed_evidence_exits_1(body: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evidence.json"
    path.write_text(body)
    argv = offline(CCEL_CASE)
    argv[2] = str(path)
    code, out = run(argv, capsys)
    assert code == 1 and out["check"].startswith("parse.evidence")


def test_a_tampered_quote_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = bytearray((QUOTES / CCEL_CASE / "quote.bin").read_bytes())
    raw[MR_TD_AT] ^= 1
    path = tmp_path / "quote.bin"
    path.write_bytes(bytes(raw))
    argv = offline(CCEL_CASE)
    argv[2] = str(path)
    code, out = run(argv, capsys)
    assert (code, out["check"]) == (1, "tdx.quote_signature")


# -- against a PCS -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if has_crls(c)])
async def test_pcs_serving_real_collateral(case: str) -> None:
    want = expected(case)
    async with LocalPcs.from_collateral_dir(QUOTES / case / "collateral") as server:
        done = await asyncio.to_thread(
            remits,
            "verify",
            want["tee"],
            str(QUOTES / case / "quote.bin"),
            "--pcs",
            server.base_url,
            "--at",
            want["verify_at"],
            "--json",
        )
        counts = dict(server.request_count)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out[f"{want['tee']}.tcb_status"] == want["tcb_status"] and out[f"{want['tee']}.crl_checked"] is True
    assert counts == {
        f"/{want['tee']}/certification/v4/tcb": 1,
        f"/{want['tee']}/certification/v4/qe/identity": 1,
        "/sgx/certification/v4/pckcrl": 1,
        "/sgx/certification/v4/rootcacrl": 1,
    }


async def test_pcs_without_the_documents() -> None:
    case = "trustee_tdx_quote_6"  # published without CRLs: the PCS path cannot complete
    async with LocalPcs.from_collateral_dir(QUOTES / case / "collateral") as server:
        done = await asyncio.to_thread(
            remits, *offline(case)[:3], "--pcs", server.base_url, "--at", expected(case)["verify_at"]
        )
    assert done.returncode == 1
    assert json.loads(done.stdout)["check"] == "endorsement.not_found"


async def test_pcs_unreachable_or_slow() -> None:
    quote = str(QUOTES / CCEL_CASE / "quote.bin")
    server = LocalPcs()
    base = await server.start()
    await server.stop()  # nothing listens there any more
    done = await asyncio.to_thread(remits, "verify", "tdx", quote, "--pcs", base, "--timeout", "1")
    assert done.returncode == 1 and json.loads(done.stdout)["check"] == "endorsement.unavailable"
    slow = LocalPcs.from_collateral_dir(QUOTES / CCEL_CASE / "collateral", delay_s=2.0)
    async with slow:
        done = await asyncio.to_thread(remits, "verify", "tdx", quote, "--pcs", slow.base_url, "--timeout", "0.2")
    assert done.returncode == 1 and json.loads(done.stdout)["check"] == "endorsement.unavailable"


async def test_pcs_serving_a_simulated_intel(tmp_path: Path) -> None:
    intel = SimulatedIntel.generate()
    platform = SimulatedTdxPlatform.create(intel)
    log, rtmrs = ccel_event_log([SimEvent(0, b"td-shim"), SimEvent(1, b"kernel"), SimEvent(2, b"cmdline")])
    quote = platform.make_quote(b"nonce", mr_td=bytes(48), rtmrs=rtmrs)
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps(platform.evidence(quote, log)))
    root = tmp_path / "root.pem"
    root.write_bytes(intel.root_pem)
    async with LocalPcs.from_simulated(intel) as server:
        argv = ["verify", "tdx", str(evidence), "--pcs", server.base_url, "--root", str(root), "--json"]
        done = await asyncio.to_thread(remits, *argv)
        assert done.returncode == 0, done.stdout + done.stderr
        out = json.loads(done.stdout)
        assert out["tdx.tcb_status"] == "UpToDate" and out["tdx.eventlog.replayed"] is True

        intel.revoke(platform.pck_cert)
        done = await asyncio.to_thread(remits, *argv)
        assert done.returncode == 1 and json.loads(done.stdout)["check"] == "tdx.pck_not_revoked"

        # The real Intel root does not vouch for the simulation.
        done = await asyncio.to_thread(remits, *argv[:-3], "--json")
        assert done.returncode == 1 and json.loads(done.stdout)["check"] == "tdx.root_is_pinned_intel_root"


def test_simulated_collateral_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    intel = SimulatedIntel.generate()
    platform = SimulatedTdxPlatform.create(intel)
    quote = tmp_path / "quote.bin"
    quote.write_bytes(platform.make_quote(b"", mr_td=bytes(48), rtmrs=[bytes(48)] * 4, debug=True, version=5))
    root = tmp_path / "root.der"
    root.write_bytes(intel.root_der)
    directory = intel.write_collateral_dir(tmp_path / "collateral", platform.fmspc)
    argv = ["verify", "tdx", str(quote), "--collateral", str(directory), "--root", str(root), "--json"]
    code, out = run(argv, capsys)
    assert code == 0, out
    assert out["tdx.quote.header.version"] == 5 and out["tdx.td_attributes.debug"] is True
    (tmp_path / "bad-root.pem").write_text("not a certificate")
    code, _ = run([*argv[:-3], "--root", str(tmp_path / "bad-root.pem")], capsys)
    assert code == 2


def test_the_remits_command_dispatches_tdx_and_sgx() -> None:
    """The same contract through the `remits` entry point users run."""
    for case, tee in (("dcapqvl_tdx_quote", "tdx"), ("dcapqvl_sgx_quote", "sgx")):
        folder = QUOTES / case
        when = json.loads((folder / "expected.json").read_text())["verify_at"]
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "verify", tee, str(folder / "quote.bin"),
             "--collateral", str(folder / "collateral"), "--at", when, "--json"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = json.loads(done.stdout)
        assert out["verified"] is True and out[f"{tee}.tcb_status"] == json.loads((folder / "expected.json").read_text())["tcb_status"]
    late = subprocess.run(
        [sys.executable, "-m", "services.cli", "verify", "tdx", str(QUOTES / "dcapqvl_tdx_quote" / "quote.bin"),
         "--collateral", str(QUOTES / "dcapqvl_tdx_quote" / "collateral"), "--at", "2030-01-01T00:00:00Z", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert late.returncode == 1 and json.loads(late.stdout)["check"].startswith("tdx.")
