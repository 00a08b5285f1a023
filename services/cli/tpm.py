"""`remits tpm enrol` and `remits tpm activate`: register a node's attestation key from its EK
certificate, once the node has proved by credential activation that the AK lives in that TPM.

1. ``remits tpm enrol NODE --ek-cert EK.crt --ak AK.pub [--ek-ca CA.pem] [--out CHALLENGE.json]``
   checks the EK certificate (against the operator's EK CA file when given) and the AK's
   attributes, picks a random 32-byte secret and wraps it for the EK, bound to the AK's TPM Name
   (TPM2_MakeCredential). The challenge file (mode 0600) keeps the secret only as its SHA-256; the
   command prints what the node needs: ``credential_blob`` and ``encrypted_secret`` (base64).
2. The node runs TPM2_ActivateCredential with its EK and that AK loaded, and sends back the secret.
   Its TPM opens the credential only if it holds the EK's private key and an object with exactly
   that public area (fixedTPM, restricted signing key).
3. ``remits tpm activate CHALLENGE.json --answer HEX`` checks the answer against the challenge and
   only then stores the AK's fingerprint as the ``tpm``/``ak`` reference value with record id NODE
   (through the admin API, or --local).

Exit codes: 0 done, 1 refused (EK certificate not from the CA, unusable AK, wrong answer: nothing
registered; or the admin API refused), 2 usage (unreadable or malformed files or arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from services.cli.admin_client import add_admin_client_flags, admin_session, print_reply

SECRET_BYTES = 32
SOURCE = "credential-activation"
_NODE = re.compile(r"^[a-z0-9_-]{1,64}$")  # a reference-value record id
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class UsageError(Exception):
    """Bad arguments or files: exit 2."""


class Refused(Exception):
    """A check failed: exit 1, nothing changed."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tpm = sub.add_parser("tpm", help="enrol a TPM node's attestation key by credential activation")
    actions = tpm.add_subparsers(dest="tpm_command", required=True)

    enrol = actions.add_parser("enrol", help="make a credential-activation challenge for a node's EK and AK")
    enrol.add_argument(
        "node", help="the node's name: the AK's record id (lowercase letters, digits, - and _)"
    )
    enrol.add_argument("--ek-cert", required=True, type=Path, help="the TPM's EK certificate (DER or PEM)")
    enrol.add_argument(
        "--ak", required=True, type=Path, help="the AK's public area: TPMT_PUBLIC or TPM2B_PUBLIC (binary)"
    )
    enrol.add_argument(
        "--ek-ca", type=Path, help="EK CA certificates (PEM bundle or DER) the EK cert must chain to"
    )
    enrol.add_argument("--out", type=Path, help="the challenge file (default: NODE.challenge.json)")
    enrol.set_defaults(run=cmd_enrol)

    activate = actions.add_parser("activate", help="check the node's answer and register its AK")
    activate.add_argument("challenge", type=Path, help="the challenge file `remits tpm enrol` wrote")
    activate.add_argument(
        "--answer", required=True, metavar="HEX", help="the secret the node's TPM recovered"
    )
    activate.add_argument(
        "--max-age", type=float, default=86400.0, metavar="SECONDS",
        help="refuse a challenge made longer ago than this (default: one day)",
    )  # fmt: skip
    add_admin_client_flags(activate)
    activate.set_defaults(run=lambda args: asyncio.run(cmd_activate(args)))


def _fail(command: str, exc: Exception) -> int:
    print(f"remits tpm {command}: {'refused: ' if isinstance(exc, Refused) else ''}{exc}", file=sys.stderr)
    return 1 if isinstance(exc, Refused) else 2


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_ak(data: bytes) -> Any:
    """The AK's parsed TPMT_PUBLIC, from TPMT_PUBLIC or TPM2B_PUBLIC bytes."""
    from shared.platforms.tpm import abi

    # A TPM2B_PUBLIC starts with the size of the rest; a TPMT_PUBLIC with its type (RSA or ECC),
    # which can never equal the size of a whole key's public area.
    if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        return abi.parse_public_2b(data)
    return abi.parse_public(data)


def make_challenge(
    node: str, ek_cert: bytes, ak: bytes, ek_ca: bytes | None, *, now: float, secret: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(challenge file document, what the node is sent). Raises UsageError / Refused."""
    from shared.errors import ParseError, VerificationError
    from shared.platforms.tpm import credential
    from shared.platforms.tpm.evidence import ak_spki

    if not _NODE.match(node):
        raise UsageError(f"node name {node!r}: 1-64 lowercase letters, digits, - and _")
    try:
        cert = credential.load_certificate(ek_cert)
        ek_key = credential.ek_certificate_key(cert)
        ca_sha256 = None
        if ek_ca is not None:
            issuer = credential.verify_ek_certificate(cert, credential.load_certificates(ek_ca), now)
            ca_sha256 = hashlib.sha256(issuer.public_bytes(_der())).hexdigest()
        public = load_ak(ak)
        credential.check_ak_attributes(public)
        blob, encrypted = credential.make_credential(ek_key, public.name(), secret)
    except ParseError as exc:
        raise UsageError(str(exc)) from None
    except VerificationError as exc:
        raise Refused(str(exc)) from None
    ak_name = public.name().hex()
    document = {
        "node": node,
        "ak_public": base64.b64encode(public.raw).decode(),
        "ak_name": ak_name,
        "ak_sha256": hashlib.sha256(ak_spki(public.key)).hexdigest(),
        "ek_cert_sha256": hashlib.sha256(cert.public_bytes(_der())).hexdigest(),
        "ek_ca_sha256": ca_sha256,
        "credential_blob": base64.b64encode(blob).decode(),
        "encrypted_secret": base64.b64encode(encrypted).decode(),
        "secret_sha256": hashlib.sha256(secret).hexdigest(),
        "created_at": int(now),
    }
    for_node = {
        "node": node,
        "ak_name": ak_name,
        "credential_blob": document["credential_blob"],
        "encrypted_secret": document["encrypted_secret"],
    }
    return document, for_node


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def cmd_enrol(args: argparse.Namespace) -> int:
    out = args.out or Path(f"{args.node}.challenge.json")
    try:
        ek_ca = _read(args.ek_ca, "EK CA file") if args.ek_ca else None
        document, for_node = make_challenge(
            args.node, _read(args.ek_cert, "EK certificate"), _read(args.ak, "AK public area"), ek_ca,
            now=time.time(), secret=os.urandom(SECRET_BYTES),
        )  # fmt: skip
        try:
            write_private(out, json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    except (UsageError, Refused) as exc:
        return _fail("enrol", exc)
    if ek_ca is None:
        print(
            "remits tpm enrol: warning: no --ek-ca, the EK certificate's issuer was not checked",
            file=sys.stderr,
        )
    print(json.dumps({**for_node, "challenge": str(out)}, indent=2))
    return 0


def read_challenge(path: Path) -> dict[str, Any]:
    """The challenge file, its fields checked and the AK's Name and fingerprint recomputed from
    its public area (so an edited file is caught, not believed)."""
    from shared.errors import RemitsError
    from shared.platforms.tpm import abi
    from shared.platforms.tpm.evidence import ak_spki

    try:
        doc = json.loads(_read(path, "challenge file"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: not a challenge (a JSON object)")
    for key in ("node", "ak_public", "ak_name", "ek_cert_sha256", "secret_sha256"):
        if not isinstance(doc.get(key), str):
            raise UsageError(f"{path}: no {key!r}")
    if not _NODE.match(doc["node"]) or not _HEX64.match(doc["secret_sha256"]):
        raise UsageError(f"{path}: a malformed node name or secret_sha256")
    if not _HEX64.match(doc["ek_cert_sha256"]):
        raise UsageError(f"{path}: a malformed ek_cert_sha256")
    try:
        public = abi.parse_public(base64.b64decode(doc["ak_public"], validate=True))
    except (binascii.Error, ValueError, RemitsError) as exc:
        raise UsageError(f"{path}: ak_public: {exc}") from None
    if public.name().hex() != doc["ak_name"]:
        raise UsageError(f"{path}: ak_name is not the Name of ak_public")
    doc["ak_sha256"] = hashlib.sha256(ak_spki(public.key)).hexdigest()
    return doc


def answer_matches(doc: dict[str, Any], answer_hex: str) -> bool:
    try:
        answer = bytes.fromhex(answer_hex.strip())
    except ValueError:
        raise UsageError("--answer: not hex") from None
    return hmac.compare_digest(hashlib.sha256(answer).hexdigest(), doc["secret_sha256"])


async def cmd_activate(args: argparse.Namespace) -> int:
    try:
        doc = await asyncio.to_thread(read_challenge, args.challenge)
        # A challenge is a nonce: an answer to one left lying around for long proves little.
        age = time.time() - float(doc.get("created_at", 0))
        if not 0 <= age <= args.max_age:
            raise Refused(f"the challenge {args.challenge} is {int(age)} s old (--max-age {int(args.max_age)})")
        if not answer_matches(doc, args.answer):
            raise Refused(f"the answer is not the secret of {args.challenge}; nothing registered")
    except (UsageError, Refused) as exc:
        return _fail("activate", exc)
    inputs = {"ek_cert.sha256": doc["ek_cert_sha256"], "ak_name": doc["ak_name"]}
    if isinstance(doc.get("ek_ca_sha256"), str):
        inputs["ek_ca.sha256"] = doc["ek_ca_sha256"]
    body = {
        "tee": "tpm", "name": "ak", "values": [doc["ak_sha256"]], "id": doc["node"],
        "source": SOURCE, "inputs": inputs,
    }  # fmt: skip
    async with admin_session(args) as call:
        return print_reply(*await call("POST", "reference-values", json.dumps(body).encode()))
