"""Sessions on a PKCS#11 token, with python-pkcs11's exceptions mapped to ``CustodyError``.

PKCS#11 login is per application and token, not per session: a second ``C_Login`` fails with
USER_ALREADY_LOGGED_IN and any ``C_Logout`` logs out every session of the process. So each token has one
logged-in anchor session, shared by reference count, and every session handed out is opened without a
PIN (python-pkcs11 then never logs out when it closes). The anchor logs out when its last user closes.

Long-lived keys hold their session through ``HeldObjects``, which logs in again and reloads the key
objects when the token drops the session, so an HSM restart or failover costs one retry, not an outage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import pkcs11
from pkcs11 import exceptions as p11e

from shared.custody.errors import CustodyError

__all__ = [
    "HeldObjects",
    "Pkcs11Config",
    "TokenSession",
    "finalize_module",
    "open_session",
    "open_token_session",
    "translate",
]


T = TypeVar("T")


@dataclass(frozen=True)
class Pkcs11Config:
    """Where the keys live: the PKCS#11 module (``.so``), the token and its user PIN.

    ``slot`` pins the slot id when several slots could carry the same token label."""

    module: str
    token_label: str
    pin: str = field(repr=False)  # never in logs or tracebacks
    slot: int | None = None


_PIN_ERRORS: tuple[type[Exception], ...] = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.UserPinNotInitialized,
)
_TOKEN_ERRORS: tuple[type[Exception], ...] = (
    p11e.NoSuchToken,
    p11e.MultipleTokensReturned,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.SlotIDInvalid,
    p11e.DeviceRemoved,
)


def _raise_mapped(exc: Exception, default_reason: str, what: str) -> NoReturn:
    name = type(exc).__name__
    if isinstance(exc, _PIN_ERRORS):
        raise CustodyError("custody.pin", f"{what}: the token refused the PIN ({name})") from exc
    if isinstance(exc, _TOKEN_ERRORS):
        raise CustodyError("custody.token", f"{what}: {name}") from exc
    if isinstance(exc, p11e.NoSuchKey):
        raise CustodyError("custody.key_not_found", f"{what}: no such key") from exc
    if isinstance(exc, p11e.MultipleObjectsReturned):
        raise CustodyError("custody.key_ambiguous", f"{what}: several keys carry this label") from exc
    if isinstance(exc, p11e.MechanismInvalid):
        raise CustodyError("custody.mechanism", f"{what}: the token does not offer the mechanism") from exc
    raise CustodyError(default_reason, f"{what}: {name}") from exc


@contextmanager
def translate(default_reason: str, what: str) -> Iterator[None]:
    """Turn python-pkcs11 errors raised inside the block into ``CustodyError``; ``default_reason`` is
    used for any error that has no more specific reason."""
    try:
        yield
    except p11e.PKCS11Error as exc:
        _raise_mapped(exc, default_reason, what)


# --- the loaded libraries --------------------------------------------------------------------------

_lock = threading.RLock()
_libraries: dict[str, Any] = {}
# A fresh key per process, so the PIN fingerprint kept for re-checks is useless outside this process.
_PIN_MAC_KEY = secrets.token_bytes(32)


def _pin_mac(pin: str) -> bytes:
    return hmac.new(_PIN_MAC_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


def _library(module: str) -> Any:
    with _lock:
        lib = _libraries.get(module)
        if lib is not None:
            return lib
        try:
            lib = pkcs11.lib(module)
        except (p11e.PKCS11Error, OSError) as exc:
            # the loader's text names the path and the dlopen error, nothing secret
            raise CustodyError("custody.module", f"cannot load PKCS#11 module {module}: {exc}") from exc
        _libraries[module] = lib
        return lib


def _find_token(config: Pkcs11Config) -> Any:
    lib = _library(config.module)
    what = f"token {config.token_label!r}"
    with translate("custody.token", what):
        if config.slot is None:
            return lib.get_token(token_label=config.token_label)
        for slot in lib.get_slots(token_present=True):
            if slot.slot_id == config.slot:
                token = slot.get_token()
                if token.label != config.token_label:
                    raise CustodyError(
                        "custody.token", f"slot {config.slot} holds token {token.label!r}, not {what}"
                    )
                return token
    raise CustodyError("custody.token", f"no slot {config.slot} with a token for {what}")


# The token forgot our login (restart, removal) ...
_LOGIN_LOST: tuple[type[Exception], ...] = (p11e.UserNotLoggedIn, p11e.DeviceRemoved, p11e.TokenNotPresent)
# ... or at least this session or the objects found through it.
_SESSION_LOST: tuple[type[Exception], ...] = (
    *_LOGIN_LOST,
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.KeyHandleInvalid,
    p11e.ObjectHandleInvalid,
)


@dataclass(eq=False)
class _Login:
    key: tuple[str, int]
    anchor: Any
    pin_mac: bytes
    users: int
    # Set once the token has dropped this login (restart, removal): its handles may be reused by the
    # module for new sessions, so they must never be closed or logged out through.
    lost: bool = False


_logins: dict[tuple[str, int], _Login] = {}
# Bumped by finalize_module: a session handle from an older generation means nothing any more.
_generations: dict[str, int] = {}


def _acquire_login(config: Pkcs11Config, token: Any) -> _Login:
    key = (config.module, token.slot.slot_id)
    with _lock:
        login = _logins.get(key)
        if login is not None:
            # The token checked this PIN when the anchor logged in; a config with another PIN must not
            # ride on that login.
            if not hmac.compare_digest(login.pin_mac, _pin_mac(config.pin)):
                raise CustodyError("custody.pin", f"token {config.token_label!r}: wrong PIN")
            login.users += 1
            return login
        with translate("custody.login", f"token {config.token_label!r}"):
            anchor = token.open(user_pin=config.pin)
        login = _Login(key, anchor, _pin_mac(config.pin), 1)
        _logins[key] = login
        return login


def _release_login(login: _Login) -> None:
    with _lock:
        login.users -= 1
        if login.users > 0:
            return
        if _logins.get(login.key) is login:
            del _logins[login.key]
        if login.lost:
            return
        try:
            login.anchor.close()
        except p11e.PKCS11Error:
            pass  # a token that vanished has logged us out already


def _anchor_answers(login: _Login) -> bool:
    try:
        login.anchor.generate_random(64)  # needs a live handle, costs the token almost nothing
    except p11e.PKCS11Error:
        return False
    return True


def _forget_login(login: _Login) -> None:
    with _lock:
        login.lost = True
        if _logins.get(login.key) is login:
            del _logins[login.key]


class TokenSession:
    """A session on a logged-in token, held until ``close``. Not thread-safe by itself: callers that
    share one serialise their operations on it."""

    def __init__(self, config: Pkcs11Config, *, rw: bool = False) -> None:
        token = _find_token(config)
        self._generation = _generations.get(config.module, 0)
        self._login = _acquire_login(config, token)
        try:
            with translate("custody.session", f"token {config.token_label!r}"):
                self.session: Any = token.open(rw=rw)
        except BaseException:
            _release_login(self._login)
            raise
        self.config = config
        self.token = token
        self._closed = False

    def mechanisms(self) -> set[Any]:
        with translate("custody.token", f"token {self.config.token_label!r}"):
            return set(self.token.slot.get_mechanisms())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._login.lost and _generations.get(self.config.module, 0) == self._generation:
                self.session.close()
        except p11e.PKCS11Error:
            pass  # the handle is gone with the token or the login; nothing is left to release
        finally:
            _release_login(self._login)

    @property
    def stale(self) -> bool:
        """True once the module was finalized or the login lost under this session."""
        return self._login.lost or _generations.get(self.config.module, 0) != self._generation

    def abandon(self, cause: Exception | None = None) -> None:
        """Drop a session the token no longer knows without calling the token with its (possibly
        reused) handle. The login goes too unless its anchor session still answers, in which case
        only this session was lost and the next one rides on the same login."""
        if self._closed:
            return
        self._closed = True
        if self.stale or isinstance(cause, _LOGIN_LOST) or not _anchor_answers(self._login):
            _forget_login(self._login)
        _release_login(self._login)

    def __enter__(self) -> TokenSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_token_session(config: Pkcs11Config, *, rw: bool = False) -> TokenSession:
    """A logged-in session the caller keeps (and must ``close``), e.g. one per long-lived key."""
    return TokenSession(config, rw=rw)


@contextmanager
def open_session(config: Pkcs11Config, *, rw: bool = False) -> Iterator[Any]:
    """A logged-in python-pkcs11 ``Session`` for the block; ``rw`` for creating token objects."""
    held = TokenSession(config, rw=rw)
    try:
        yield held.session
    finally:
        held.close()


class HeldObjects:
    """Token objects used over one session held for their owner's life.

    ``load`` finds and checks the objects on a fresh session (and raises if they are unfit). When the
    token drops the session (restart, failover, re-insertion), the next operation logs in again,
    reloads the objects and retries once, instead of failing until the service restarts."""

    def __init__(self, config: Pkcs11Config, what: str, load: Callable[[TokenSession], None]) -> None:
        self.config = config
        self._what = what
        self._load = load
        self._lock = threading.Lock()
        self._closed = False
        self._held: TokenSession | None = None
        self._open()

    def _open(self) -> None:
        held = open_token_session(self.config)
        try:
            self._load(held)
        except BaseException:
            held.close()
            raise
        self._held = held

    def use(self, reason: str, operation: Callable[[], T]) -> T:
        """``operation()`` on the held session, serialised; errors become ``CustodyError(reason)``."""
        with self._lock:
            for attempt in range(2):
                if self._closed:
                    raise CustodyError("custody.closed", f"{self._what} is closed")
                if self._held is not None and self._held.stale:
                    self._held.abandon()
                    self._held = None
                if self._held is None:
                    self._open()  # after a loss, or an earlier reopen that failed: the token may be back
                try:
                    return operation()
                except _SESSION_LOST as exc:
                    if attempt:
                        _raise_mapped(exc, reason, self._what)
                    assert self._held is not None
                    self._held.abandon(exc)
                    self._held = None
                except p11e.PKCS11Error as exc:
                    _raise_mapped(exc, reason, self._what)
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._held is not None:
                self._held.close()
                self._held = None


def finalize_module(module: str) -> None:
    """Log out of and forget every token of ``module`` and finalize it, so the next use initialises it
    afresh (SoftHSM reads its configuration only then). Sessions still held become unusable."""
    with _lock:
        for key in [k for k in _logins if k[0] == module]:
            login = _logins.pop(key)
            try:
                login.anchor.close()
            except p11e.PKCS11Error:
                pass
            login.lost = True
        _generations[module] = _generations.get(module, 0) + 1
        lib = _libraries.pop(module, None)
        if lib is not None:
            try:
                lib.finalize()
            except p11e.PKCS11Error:
                pass
