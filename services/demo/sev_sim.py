"""A simulated AMD SEV / SEV-ES platform, for the demo and the tests.

Part 1 (``SimulatedAmdSev``): a complete legacy certificate chain in AMD's real binary formats with
real cryptography -- an RSA ARK and ASK (4096-bit, RSASSA-PSS/SHA-384 for Rome and later; 2048-bit,
SHA-256 for Naples), a P-384 CEK signed by the ASK, a self-signed P-384 OCA, a P-384 PEK signed by
both OCA and CEK, and a P-384 ECDH PDH signed by the PEK. Only the trust anchor differs from AMD's:
``roots`` is a ``SevRoots`` holding the simulated ARK/ASK, which ``verify_chain`` accepts in place of
``pinned_roots()``. The PDH private key is exposed because the simulated firmware needs it for the
LAUNCH_START key agreement.

The firmware-side session logic (LAUNCH_START/MEASURE/SECRET) lives in its own class below, separate
from the certificate chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from shared.errors import ParseError, VerificationError
from shared.platforms.sev.abi import (
    Algo,
    AmdCaCert,
    EcPubKey,
    SevCert,
    SignatureSlot,
    Usage,
    ec_signature_to_slot,
    parse_sev_cert,
    rsa_signature_to_slot,
)
from shared.platforms.sev.measure import launch_digest as _launch_digest
from shared.platforms.sev.measure import launch_measure
from shared.platforms.sev.secret import libkrun_secret, open_secret
from shared.platforms.sev.session import (
    POLICY_MAC,
    SessionBlob,
    SevPolicy,
    aes128_ctr,
    kek_kik,
    master_secret,
    shared_secret,
    unwrap_with_secret,
)
from shared.platforms.sev.verify import Generation, SevRootPair, SevRoots
from shared.platforms.sev.wire import decode_challenge_params, decode_secret

__all__ = [
    "SEV_BAD_KINDS",
    "SEV_KINDS",
    "SevFirmwareError",
    "SevLaunchResult",
    "SimulatedAmdSev",
    "SimulatedSevFirmware",
    "SimulatedVmm",
    "foreign_platform",
]

# ================================================================================================
# Part 1: the simulated AMD certificate chain (legacy SEV formats)
# ================================================================================================

# API version the simulated firmware puts in its certificates (the real Milan chain says 1.51; the
# CEK is issued by AMD at 0.14 on every real chain seen).
_DEFAULT_API = (1, 51)
_CEK_API = (0, 14)


def _pss_hash(bits: int) -> hashes.HashAlgorithm:
    return hashes.SHA256() if bits == 2048 else hashes.SHA384()


def _ca_cert(
    key: rsa.RSAPrivateKey, key_id: bytes, certifying_id: bytes, usage: Usage, signer: rsa.RSAPrivateKey
) -> AmdCaCert:
    numbers = key.public_key().public_numbers()
    bits = key.key_size
    unsigned = AmdCaCert(
        version=1,
        key_id=key_id,
        certifying_id=certifying_id,
        key_usage=usage,
        pubexp_bits=bits,
        modulus_bits=bits,
        pubexp=numbers.e,
        modulus=numbers.n,
        signature=bytes(bits // 8),
    )
    algorithm = _pss_hash(signer.key_size)
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    signature = signer.sign(unsigned.signed_bytes(), pss, algorithm)
    return AmdCaCert(**{**_fields(unsigned), "signature": signature[::-1]})


def _fields(cert: AmdCaCert) -> dict[str, object]:
    return {name: getattr(cert, name) for name in AmdCaCert.__slots__}  # type: ignore[attr-defined]


def _sev_body(key: ec.EllipticCurvePublicKey, usage: Usage, algo: Algo, api: tuple[int, int]) -> SevCert:
    return SevCert(
        1, api[0], api[1], usage, algo, EcPubKey.of(key), SignatureSlot.none(), SignatureSlot.none()
    )


def _ecdsa_slot(body: SevCert, signer: ec.EllipticCurvePrivateKey, signer_usage: Usage) -> SignatureSlot:
    der = signer.sign(body.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return SignatureSlot(signer_usage, Algo.ECDSA_SHA256, ec_signature_to_slot(r, s))


def _rsa_slot(body: SevCert, signer: rsa.RSAPrivateKey) -> SignatureSlot:
    algorithm = _pss_hash(signer.key_size)
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    signature = signer.sign(body.signed_bytes(), pss, algorithm)
    algo = Algo.RSA_SHA256 if signer.key_size == 2048 else Algo.RSA_SHA384
    return SignatureSlot(Usage.ASK, algo, rsa_signature_to_slot(signature))


@dataclass(frozen=True)
class SimulatedAmdSev:
    """A simulated AMD vendor (ARK, ASK) and one SEV platform (CEK, OCA, PEK, PDH)."""

    generation: Generation
    chip_id: bytes
    ark: bytes
    ask: bytes
    cek: bytes
    oca: bytes
    pek: bytes
    pdh: bytes
    pdh_private_key: ec.EllipticCurvePrivateKey
    roots: SevRoots
    api_major: int
    api_minor: int

    # The vendor's ASK key, to make more platforms of the same vendor (``another_platform``).
    ask_private_key: rsa.RSAPrivateKey | None = field(default=None, repr=False, compare=False)

    @classmethod
    def generate(cls, product: str = "Milan", api: tuple[int, int] = _DEFAULT_API) -> SimulatedAmdSev:
        generation = Generation(product)
        bits = 2048 if generation is Generation.NAPLES else 4096
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        ark_id, ask_id = os.urandom(16), os.urandom(16)
        ark = _ca_cert(ark_key, ark_id, ark_id, Usage.ARK, ark_key)
        ask = _ca_cert(ask_key, ask_id, ark_id, Usage.ASK, ark_key)
        return cls._platform(generation, ark, ask, ask_key, api)

    @classmethod
    def _platform(
        cls, generation: Generation, ark: AmdCaCert, ask: AmdCaCert, ask_key: rsa.RSAPrivateKey, api: tuple[int, int]
    ) -> SimulatedAmdSev:
        curve = ec.SECP384R1()
        cek_key, oca_key, pek_key, pdh_key = (ec.generate_private_key(curve) for _ in range(4))
        cek_body = _sev_body(cek_key.public_key(), Usage.CEK, Algo.ECDSA_SHA256, _CEK_API)
        cek = cek_body.with_signatures(_rsa_slot(cek_body, ask_key))
        oca_body = _sev_body(oca_key.public_key(), Usage.OCA, Algo.ECDSA_SHA256, api)
        oca = oca_body.with_signatures(_ecdsa_slot(oca_body, oca_key, Usage.OCA))
        pek_body = _sev_body(pek_key.public_key(), Usage.PEK, Algo.ECDSA_SHA256, api)
        pek = pek_body.with_signatures(
            _ecdsa_slot(pek_body, oca_key, Usage.OCA), _ecdsa_slot(pek_body, cek_key, Usage.CEK)
        )
        pdh_body = _sev_body(pdh_key.public_key(), Usage.PDH, Algo.ECDH_SHA256, api)
        pdh = pdh_body.with_signatures(_ecdsa_slot(pdh_body, pek_key, Usage.PEK))
        return cls(
            generation=generation,
            chip_id=os.urandom(64),
            ark=ark.encode(),
            ask=ask.encode(),
            cek=cek.encode(),
            oca=oca.encode(),
            pek=pek.encode(),
            pdh=pdh.encode(),
            pdh_private_key=pdh_key,
            roots=SevRoots((SevRootPair(generation, ark, ask),)),
            api_major=api[0],
            api_minor=api[1],
            ask_private_key=ask_key,
        )

    def another_platform(self) -> SimulatedAmdSev:
        """A second chip of the same vendor: same ARK and ASK, its own CEK, OCA, PEK and PDH."""
        assert self.ask_private_key is not None
        pair = self.roots.pairs[0]
        return self._platform(self.generation, pair.ark, pair.ask, self.ask_private_key, (self.api_major, self.api_minor))

    def chain(self) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
        """(ark, ask, cek, oca, pek, pdh): ``verify_chain``'s positional order."""
        return (self.ark, self.ask, self.cek, self.oca, self.pek, self.pdh)

    def sev_request_chain(self) -> dict[str, dict[str, list[int]]]:
        """The chain as kbs-types ``SevRequest.chain`` (serde byte arrays)."""
        return {
            "ca": {"ark": list(self.ark), "ask": list(self.ask)},
            "sev": {
                "pdh": list(self.pdh),
                "pek": list(self.pek),
                "oca": list(self.oca),
                "cek": list(self.cek),
            },
        }


# ================================================================================================
# Part 2: simulated firmware session logic (LAUNCH_START / MEASURE / SECRET) -- added separately.
# ================================================================================================
#
# ``SimulatedSevFirmware`` is the firmware of one SEV platform running one guest launch at a time,
# with real cryptography (the core's ``session``/``measure``/``secret`` functions, used from the
# firmware's side). ``SimulatedVmm`` is a libkrun-style host VMM: it speaks the kbs-types HTTP flow
# to a key broker (REMITS' gateway) and drives the firmware in between, as libkrun-sev does.


class SevFirmwareError(VerificationError):
    """The simulated firmware refused a command (real firmware returns an error status). ``check``
    is a dotted reason: ``sev.firmware.wrap_mac``, ``sev.firmware.policy_mac``,
    ``sev.firmware.policy`` (reserved bits, or a minimum API version above the firmware's),
    ``sev.firmware.godh_cert``, ``sev.firmware.guest_state`` (a command out of order),
    ``sev.firmware.vmsa`` (a VMSA for a non-ES guest, or an ES guest without one),
    ``sev.firmware.secret_mac``."""


class _GuestState(str, Enum):
    UNINIT = "uninit"
    LUPDATE = "lupdate"  # after LAUNCH_START: UPDATE_DATA / UPDATE_VMSA allowed
    LSECRET = "lsecret"  # after LAUNCH_MEASURE: LAUNCH_SECRET allowed
    RUNNING = "running"  # after LAUNCH_FINISH


VMSA_SIZE = 4096


class SimulatedSevFirmware:
    """The SEV firmware of ``platform``, with one guest launch context (LAUNCH_START starts a new
    one, discarding the previous: use one instance per concurrent launch).

    ``build`` is the firmware build number PLATFORM_STATUS reports (part of the MEASURE);
    ``rng`` supplies the MNONCEs. ``check_policy_mac=False`` is a *broken* firmware that accepts any
    policy at LAUNCH_START (no real firmware does): the demo uses it to show that the MEASURE binds
    the policy too, so the key broker still refuses such a launch."""

    def __init__(
        self,
        platform: SimulatedAmdSev,
        *,
        build: int = 7,
        rng: Callable[[int], bytes] = os.urandom,
        check_policy_mac: bool = True,
    ) -> None:
        if type(build) is not int or not 0 <= build <= 0xFF:
            raise ValueError(f"build must be 0..255, got {build!r}")
        self.platform = platform
        self.build = build
        self._rng = rng
        self._check_policy_mac = check_policy_mac
        self._reset()

    def _reset(self) -> None:
        self._state = _GuestState.UNINIT
        self._policy: SevPolicy | None = None
        self._tek = b""
        self._tik = b""
        self._digest = hashlib.sha256()
        self._vmsas = 0
        self._measure: bytes | None = None
        self.injected: list[bytes] = []  # LAUNCH_SECRET plaintexts, as the guest would see them

    # --- status ---------------------------------------------------------------------------------

    def platform_status(self) -> tuple[int, int, int]:
        """PLATFORM_STATUS: (API major, API minor, build)."""
        return self.platform.api_major, self.platform.api_minor, self.build

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def policy(self) -> int | None:
        """The running guest's policy u32 (None before LAUNCH_START)."""
        return None if self._policy is None else self._policy.encode()

    def _expect(self, command: str, *states: _GuestState) -> None:
        if self._state not in states:
            raise SevFirmwareError(
                "sev.firmware.guest_state", f"{command} in guest state {self._state.value}"
            )

    # --- launch commands ------------------------------------------------------------------------

    def launch_start(self, policy: int, godh_cert: bytes, session_blob: bytes) -> None:
        """LAUNCH_START: ECDH(PDH private, GODH public), unwrap TEK/TIK and check the policy MAC.
        Refuses (``SevFirmwareError``) a malformed or non-P-384 GODH certificate, a session whose
        WRAP_MAC or POLICY_MAC does not verify, and a policy the firmware cannot honour."""
        self._reset()
        try:
            parsed = SevPolicy.decode(policy)
        except ParseError as exc:
            raise SevFirmwareError("sev.firmware.policy", exc.detail) from exc
        api = (self.platform.api_major, self.platform.api_minor)
        if (parsed.api_major, parsed.api_minor) > api:
            raise SevFirmwareError(
                "sev.firmware.policy",
                f"the policy requires API {parsed.api_major}.{parsed.api_minor}, the firmware is {api[0]}.{api[1]}",
            )
        try:
            cert = parse_sev_cert(godh_cert, "sev.godh")
        except ParseError as exc:
            raise SevFirmwareError("sev.firmware.godh_cert", f"{exc.reason}: {exc.detail}") from exc
        key = cert.public_key()
        if (
            cert.pubkey_usage is not Usage.PDH
            or not cert.pubkey_algo.is_ecdh
            or not isinstance(key, ec.EllipticCurvePublicKey)
            or not isinstance(key.curve, ec.SECP384R1)
        ):
            raise SevFirmwareError(
                "sev.firmware.godh_cert", "the GODH certificate must hold a P-384 ECDH key (usage PDH)"
            )
        z = shared_secret(self.platform.pdh_private_key, key)
        try:
            tek, tik = unwrap_with_secret(session_blob, z, parsed)
        except VerificationError as exc:
            if exc.check != POLICY_MAC or self._check_policy_mac:
                raise SevFirmwareError(f"sev.firmware.{exc.check.removeprefix('sev.')}", exc.detail) from exc
            tek, tik = _unwrap_ignoring_policy(session_blob, z)
        except ParseError as exc:
            raise SevFirmwareError("sev.firmware.session", f"{exc.reason}: {exc.detail}") from exc
        self._policy, self._tek, self._tik = parsed, tek, tik
        self._state = _GuestState.LUPDATE

    def launch_update_data(self, data: bytes) -> None:
        """LAUNCH_UPDATE_DATA: encrypt a region in place and extend the launch digest with it."""
        self._expect("LAUNCH_UPDATE_DATA", _GuestState.LUPDATE)
        self._digest.update(bytes(data))

    def launch_update_vmsa(self, vmsa: bytes) -> None:
        """LAUNCH_UPDATE_VMSA (SEV-ES only): extend the launch digest with a vCPU's 4 KiB VMSA."""
        self._expect("LAUNCH_UPDATE_VMSA", _GuestState.LUPDATE)
        assert self._policy is not None
        if not self._policy.es:
            raise SevFirmwareError(
                "sev.firmware.vmsa", "LAUNCH_UPDATE_VMSA for a guest whose policy is not ES"
            )
        if len(vmsa) != VMSA_SIZE:
            raise SevFirmwareError("sev.firmware.vmsa", f"a VMSA is {VMSA_SIZE} bytes, got {len(vmsa)}")
        self._digest.update(bytes(vmsa))
        self._vmsas += 1

    def launch_measure(self) -> tuple[bytes, bytes]:
        """LAUNCH_MEASURE: (MEASURE, MNONCE) with a fresh MNONCE; the guest then awaits its secret."""
        self._expect("LAUNCH_MEASURE", _GuestState.LUPDATE)
        assert self._policy is not None
        if self._policy.es and self._vmsas == 0:
            raise SevFirmwareError(
                "sev.firmware.vmsa", "an SEV-ES guest needs its VMSAs before LAUNCH_MEASURE"
            )
        mnonce = self._rng(16)
        api_major, api_minor, build = self.platform_status()
        value = launch_measure(
            self._tik, api_major, api_minor, build, self._policy, self._digest.digest(), mnonce
        )
        self._measure = value
        self._state = _GuestState.LSECRET
        return value, mnonce

    def launch_secret(self, header: bytes, payload: bytes) -> bytes:
        """LAUNCH_SECRET: check the packet's MAC (under TIK, bound to the MEASURE returned) and
        decrypt it under TEK; the plaintext is what the guest sees (also kept in ``injected``)."""
        self._expect("LAUNCH_SECRET", _GuestState.LSECRET)
        assert self._measure is not None
        try:
            plain = open_secret(header, payload, self._tek, self._tik, self._measure)
        except VerificationError as exc:
            raise SevFirmwareError("sev.firmware.secret_mac", exc.detail) from exc
        except ParseError as exc:
            raise SevFirmwareError("sev.firmware.secret", f"{exc.reason}: {exc.detail}") from exc
        self.injected.append(plain)
        return plain

    def launch_finish(self) -> None:
        """LAUNCH_FINISH: the guest runs; no more launch commands."""
        self._expect("LAUNCH_FINISH", _GuestState.LUPDATE, _GuestState.LSECRET)
        self._tek = self._tik = b""
        self._state = _GuestState.RUNNING

    def launch_digest(self) -> bytes:
        """GCTX.LD so far (a debugging aid: real firmware does not reveal it)."""
        return self._digest.digest()


def _unwrap_ignoring_policy(blob: bytes, z: bytes) -> tuple[bytes, bytes]:
    """TEK/TIK without the POLICY_MAC check (only for ``check_policy_mac=False``)."""
    parts = SessionBlob.parse(blob)
    kek, _ = kek_kik(master_secret(z, parts.nonce))
    keys = aes128_ctr(kek, parts.wrap_iv, parts.wrap_tk)
    return keys[:16], keys[16:]


# --- the VMM ------------------------------------------------------------------------------------

SEV_BAD_KINDS = ("tampered", "wrong_policy", "unknown_vendor", "replayed")
SEV_KINDS = ("good", *SEV_BAD_KINDS)
NODBG = 0x1
_REASON = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")


@dataclass(frozen=True)
class SevLaunchResult:
    """One launch as the VMM saw it.

    ``status``: ``attested`` (``/attest`` answered 200 and, when the secret came, the firmware
    accepted it), ``rejected`` (the broker refused: 401/403 at ``/auth``, ``/attest`` or ``/key``),
    ``launch_failed`` (the firmware refused a launch command), ``error`` (anything else: an
    unexpected status or body). ``stage`` is where it stopped (``auth``, ``launch``, ``attest``,
    ``key``, ``secret``, or ``done``); ``reason`` the broker's dotted reason (from the KBS error
    body's detail) or the firmware's check; ``secret_received`` the secret the guest got (libkrun's
    512-byte area, zero padding stripped)."""

    kind: str
    status: str
    reason: str
    secret_received: bytes | None
    latency_ms: float
    stage: str = "done"
    http_status: int | None = None
    token: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class _Http:
    status: int
    raw: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.raw) if self.raw else None
        except ValueError:
            return None

    def reason_detail(self) -> tuple[str, str]:
        """The dotted reason at the head of a KBS error body's ``detail``, and the detail."""
        body = self.json()
        detail = (
            str(body.get("detail", "")) if isinstance(body, dict) else self.raw[:200].decode(errors="replace")
        )
        match = _REASON.match(detail.strip())
        return (match.group(0) if match else f"http.{self.status}"), detail


class _Stop(Exception):
    def __init__(
        self, status: str, stage: str, reason: str, detail: str = "", http_status: int | None = None
    ) -> None:
        super().__init__(reason)
        self.status, self.stage, self.reason, self.detail, self.http_status = (
            status,
            stage,
            reason,
            detail,
            http_status,
        )
        self.token: str | None = None


@cache
def foreign_platform(product: str = "Milan") -> SimulatedAmdSev:
    """A platform of an unknown vendor (its own ARK/ASK), generated once per process."""
    return SimulatedAmdSev.generate(product)


class SimulatedVmm:
    """A libkrun-style host VMM launching one SEV/SEV-ES guest against a key broker at
    ``base_url`` (``/kbs/v0/auth``, ``/attest``, ``/key/<workload_id>``).

    ``regions`` are the LAUNCH_UPDATE_DATA regions in order (firmware, kernel bundle, initrd, zero
    page); ``vmsas`` the 4 KiB VMSA pages, used when the challenge's policy has ES. The workload's
    reference launch digest is ``launch_digest`` (``measure.launch_digest(b"".join(regions),
    vmsas=vmsas)``). ``connector`` shares a connection pool (not closed here); each ``run`` uses its
    own ``aiohttp.ClientSession`` with an unsafe cookie jar (the session cookie on 127.0.0.1).
    Runs on one instance are serialised (one firmware guest context)."""

    def __init__(
        self,
        base_url: str,
        firmware: SimulatedSevFirmware,
        *,
        workload_id: str,
        regions: Sequence[bytes],
        vmsas: Sequence[bytes] = (),
        connector: aiohttp.BaseConnector | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.firmware = firmware
        self.workload_id = workload_id
        self.regions = tuple(bytes(r) for r in regions)
        self.vmsas = tuple(bytes(v) for v in vmsas)
        self._connector = connector
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._lock = asyncio.Lock()
        self._previous: tuple[bytes, bytes] | None = None  # the last (MEASURE, MNONCE) sent

    @property
    def launch_digest(self) -> bytes:
        """GCTX.LD of an honest launch of this image (with the VMSAs: for an ES policy)."""
        return _launch_digest(b"".join(self.regions), vmsas=self.vmsas)

    @property
    def launch_digest_sev(self) -> bytes:
        """GCTX.LD of an honest launch without VMSAs (a plain SEV policy)."""
        return _launch_digest(b"".join(self.regions))

    def auth_body(self, platform: SimulatedAmdSev | None = None) -> dict[str, Any]:
        """The ``/auth`` body: SevRequest as an object (``platform``'s chain; default the firmware's)."""
        api_major, api_minor, build = self.firmware.platform_status()
        return {
            "version": "0.0.0",
            "tee": "sev",
            "extra-params": {
                "workload_id": self.workload_id,
                "build": {"version": {"major": api_major, "minor": api_minor}, "build": build},
                "chain": (platform or self.firmware.platform).sev_request_chain(),
            },
        }

    @staticmethod
    def attest_body(measure: bytes, mnonce: bytes) -> dict[str, Any]:
        """The ``/attest`` body exactly as libkrun sends it (old kbs-types, empty RSA tee-pubkey)."""
        evidence = json.dumps({"measure": list(measure), "mnonce": list(mnonce)}, separators=(",", ":"))
        return {"tee-pubkey": {"kty": "", "alg": "", "k_mod": "", "k_exp": ""}, "tee-evidence": evidence}

    async def run(self, kind: str = "good") -> SevLaunchResult:
        """One launch of ``kind`` (``SEV_KINDS``): ``good``; ``tampered`` (one byte of the first
        region flipped); ``wrong_policy`` (LAUNCH_START with the challenge's policy but debugging
        allowed); ``unknown_vendor`` (the chain of an unknown vendor's platform); ``replayed`` (the
        MEASURE/MNONCE of an earlier launch sent in a new session: an honest launch is run first
        when there is none)."""
        if kind not in SEV_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {SEV_KINDS}")
        async with self._lock:
            if kind == "replayed" and self._previous is None:
                await self._run("good")
            return await self._run(kind)

    async def _run(self, kind: str) -> SevLaunchResult:
        started = time.perf_counter()
        http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=self._connector,
            connector_owner=self._connector is None,
            timeout=self._timeout,
        )
        try:
            async with http:
                token, secret_bytes = await self._flow(http, kind)
        except _Stop as stop:
            return SevLaunchResult(
                kind,
                stop.status,
                stop.reason,
                None,
                _ms(started),
                stop.stage,
                stop.http_status,
                stop.token,
                stop.detail,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return SevLaunchResult(
                kind, "error", "http.unreachable", None, _ms(started), "http", None, None, repr(exc)
            )
        return SevLaunchResult(kind, "attested", "", secret_bytes, _ms(started), "done", 200, token)

    async def _flow(self, http: aiohttp.ClientSession, kind: str) -> tuple[str | None, bytes | None]:
        # 1. auth: the chain and firmware version, answered with the LAUNCH_START parameters
        platform = (
            foreign_platform(self.firmware.platform.generation.value) if kind == "unknown_vendor" else None
        )
        got = await self._send(http, "POST", "/kbs/v0/auth", json=self.auth_body(platform))
        self._expect_ok(got, "auth")
        body = got.json()
        try:
            if not isinstance(body, dict) or "extra-params" not in body:
                raise ParseError("challenge", "no extra-params", prefix="sev")
            challenge = decode_challenge_params(body["extra-params"])
        except ParseError as exc:
            raise _Stop("error", "auth", exc.reason, exc.detail, got.status) from exc

        # 2. the launch, on the firmware
        start = challenge.start
        policy = start.policy.to_u32()
        if kind == "wrong_policy":
            policy ^= NODBG  # debugging allowed (for the usual NODBG policy)
        regions = list(self.regions)
        if kind == "tampered" and regions and regions[0]:
            first = bytearray(regions[0])
            first[0] ^= 0x01
            regions[0] = bytes(first)
        elif kind == "tampered":
            regions.append(b"\x01")
        fw = self.firmware
        try:
            fw.launch_start(policy, bytes(start.cert), start.session.blob())
            for region in regions:
                fw.launch_update_data(region)
            if SevPolicy.decode(policy).es:
                for vmsa in self.vmsas:
                    fw.launch_update_vmsa(vmsa)
            measure_bytes, mnonce = fw.launch_measure()
        except SevFirmwareError as exc:
            raise _Stop("launch_failed", "launch", exc.check, exc.detail) from exc
        if kind == "replayed":
            assert self._previous is not None
            measure_bytes, mnonce = self._previous
        self._previous = (measure_bytes, mnonce)

        # 3. attest: the measurement
        got = await self._send(http, "POST", "/kbs/v0/attest", json=self.attest_body(measure_bytes, mnonce))
        self._expect_ok(got, "attest")
        answer = got.json()
        token = answer.get("token") if isinstance(answer, dict) else None
        token = token if isinstance(token, str) else None

        # 4. the secret, injected by LAUNCH_SECRET
        try:
            return token, await self._secret(http)
        except _Stop as stop:
            stop.token = token
            raise

    async def _secret(self, http: aiohttp.ClientSession) -> bytes:
        got = await self._send(http, "GET", f"/kbs/v0/key/{self.workload_id}")
        self._expect_ok(got, "key")
        try:
            flags, iv, mac, ciphertext = decode_secret(got.raw)
            plain = self.firmware.launch_secret(struct.pack("<I", flags) + iv + mac, ciphertext)
        except ParseError as exc:
            raise _Stop("error", "key", exc.reason, exc.detail, got.status) from exc
        except SevFirmwareError as exc:
            raise _Stop("error", "secret", exc.check, exc.detail, got.status) from exc
        self.firmware.launch_finish()
        return libkrun_secret(plain)

    async def _send(self, http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> _Http:
        async with http.request(method, f"{self.base_url}{path}", **kwargs) as resp:
            return _Http(resp.status, await resp.read())

    @staticmethod
    def _expect_ok(got: _Http, stage: str) -> None:
        if got.status == 200:
            return
        reason, detail = got.reason_detail()
        status = "rejected" if got.status in (401, 403) else "error"
        raise _Stop(status, stage, reason, detail, got.status)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
