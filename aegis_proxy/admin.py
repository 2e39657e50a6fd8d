"""The admin listener of `aegis run`: `/healthz`, `/readyz` and `/metrics` on their own address (default
127.0.0.1:9464, `--admin HOST:PORT`, `admin = "off"` to disable), apart from the port agents use, so a load balancer or
Kubernetes probes them without going through the firewall and agents cannot reach them.

    GET /healthz   200 "ok" while the process serves at all (liveness: restart me if this stops answering)
    GET /readyz    200 when this replica can decide calls, else 503; a JSON body names each check:
                   policy  a policy is loaded (hot reloads keep the last good one)
                   audit   the writer is open, the database answers (a cheap read of the log's head row, cached for
                           PING_TTL seconds) and no append failed in the last FAILURE_WINDOW seconds without a
                           success since (a replica whose appends fail denies every call: take it out of rotation)
                   key     the signing key is loaded and not retired by a key rotation (it could not sign)
                   proxy   the agents' port accepts connections (`aegis run` starts this listener first)
    GET /metrics   Prometheus text format (aegis_proxy.metrics)

Core module: standard library HTTP server in a daemon thread, no mitmproxy. Every failure inside a handler is a 500
(or a 503 for readiness): a broken check never reports ready.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from aegis_proxy.errors import ConfigError
from aegis_proxy.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from aegis_proxy.approvals import ApprovalStore
    from aegis_proxy.gate import Gate

log = logging.getLogger("aegis_proxy.admin")

DEFAULT_ADMIN = "127.0.0.1:9464"
OFF = "off"
PING_TTL = 2.0  # seconds a database ping result is reused (probes every few seconds, scrapes, curl loops)
PING_WAIT = 2.0  # seconds a probe waits for another probe's ping before it reports the database as not answering
FAILURE_WINDOW = 10.0  # seconds a failed audit append keeps the replica unready, unless one succeeded since
HANDLER_TIMEOUT = 10.0  # seconds a client may take to send its request (a slow client holds only its own thread)


def parse_admin(value: str) -> tuple[str, int] | None:
    """`HOST:PORT` (IPv6 as `[::1]:9464`) -> (host, port); "off" -> None. Port 0 picks a free port (tests)."""
    if value == OFF:
        return None
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(
            f"admin address {value!r} is not HOST:PORT or off",
            hint=f'e.g. --admin {DEFAULT_ADMIN} (the default), --admin 0.0.0.0:9464 in a container, or "off"',
        )
    return host, int(port)


# -- readiness --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in self.checks},
        }


@dataclass(frozen=True, slots=True)
class _Ping:
    at: float  # monotonic
    error: str  # "" when the head row was read
    retired: frozenset[str]


class GateReadiness:
    """The readiness checks of one Gate (policy, audit, key). Thread-safe; pings are cached for `ping_ttl`."""

    def __init__(
        self,
        gate: Gate,
        metrics: Metrics | None = None,
        *,
        proxy: tuple[str, int] | None = None,
        ping_ttl: float = PING_TTL,
        failure_window: float = FAILURE_WINDOW,
    ) -> None:
        self.gate = gate
        self.metrics = metrics
        self.proxy = proxy
        self.ping_ttl = ping_ttl
        self.failure_window = failure_window
        self._lock = threading.Lock()  # one ping at a time; concurrent probes wait for it and share its result
        self._ping: _Ping | None = None

    def __call__(self) -> Readiness:
        checks: list[Check] = []
        pinged: list[_Ping] = []

        def ping() -> _Ping:  # at most one database round trip per readiness check
            if not pinged:
                pinged.append(self.ping())
            return pinged[0]

        named: list[tuple[str, Callable[[], Check]]] = [
            ("policy", self._policy),
            ("audit", lambda: self._audit(ping)),
            ("key", lambda: self._key(ping)),
        ]
        if self.proxy is not None:
            named.append(("proxy", self._proxy))
        for name, check in named:
            try:
                checks.append(check())
            except Exception as error:  # a check that cannot run says "not ready"
                checks.append(Check(name, False, f"the check failed: {type(error).__name__}: {error}"[:300]))
        return Readiness(tuple(checks))

    def _policy(self) -> Check:
        watcher = self.gate.watcher
        if watcher is None:
            return Check("policy", True, "built-in severity table")
        digest = watcher.digest
        if not digest:
            return Check("policy", False, "no policy loaded")
        return Check("policy", True, f"digest {digest[:16]}")

    def _audit(self, pinger: Callable[[], _Ping]) -> Check:
        if self.gate.writer.closed:
            return Check("audit", False, "the audit writer is closed (shutting down)")
        ping = pinger()
        if ping.error:
            return Check("audit", False, ping.error)
        if self.metrics is not None:  # the database answers reads, but did the last append work?
            health = self.metrics.append_health()
            failed = health.last_failure
            unresolved = failed is not None and (health.last_ok is None or health.last_ok < failed)
            if unresolved and failed is not None and time.monotonic() - failed < self.failure_window:
                return Check("audit", False, f"the last audit append failed: {health.last_error}")
        return Check("audit", True, f"{self.gate.writer.store.origin} reachable")

    def _key(self, pinger: Callable[[], _Ping]) -> Check:
        key_id = self.gate.writer.store.key_id
        if not key_id:
            return Check("key", False, "no signing key loaded")
        ping = pinger()
        if not ping.error and key_id in ping.retired:
            return Check("key", False, f"signing key {key_id} was retired by a key rotation; restart with the new key")
        return Check("key", True, f"key id {key_id}")

    def _proxy(self) -> Check:
        assert self.proxy is not None
        host, port = self.proxy
        # A wildcard listener is reached through loopback; a refused connection means agents would be refused too.
        target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        try:
            with socket.create_connection((target, port), timeout=1.0):
                pass
        except OSError as error:
            return Check("proxy", False, f"the proxy does not accept connections on {host}:{port}: {error}")
        return Check("proxy", True, f"listening on {host}:{port}")

    def ping(self) -> _Ping:
        """Read the log's head row (one indexed row): the database answers, and which keys were retired. A ping still
        waiting on the database after PING_WAIT seconds makes the others report "not ready" instead of queueing."""
        if not self._lock.acquire(timeout=PING_WAIT):
            return _Ping(time.monotonic(), f"the audit database has not answered for over {PING_WAIT:g} s", frozenset())
        try:
            cached = self._ping
            now = time.monotonic()
            if cached is not None and now - cached.at < self.ping_ttl:
                return cached
            self._ping = _head_ping(self.gate, now)
            return self._ping
        finally:
            self._lock.release()


def _head_ping(gate: Gate, now: float) -> _Ping:
    from aegis_proxy.audit.store import audit_head

    store = gate.writer.store
    try:
        with store.engine.connect() as conn:
            row = conn.execute(select(audit_head.c.retired_keys).where(audit_head.c.origin == store.origin)).first()
    except Exception as error:
        return _Ping(
            now, f"the audit database does not answer: {type(error).__name__}: {str(error)[:200]}", frozenset()
        )
    if row is None:
        return _Ping(now, f"the audit log {store.origin} has no head row", frozenset())
    return _Ping(now, "", frozenset(str(row.retired_keys).split()))


def pending_approvals(store: ApprovalStore) -> int:
    """Pending approvals not yet past their deadline, in the shared database (every replica sees the same)."""
    from aegis_proxy.approvals import approvals

    query = (
        select(func.count())
        .select_from(approvals)
        .where(approvals.c.status == "pending", approvals.c.expires_at > time.time())
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def probe_status(gate: Gate) -> str:
    """ "absent" (no probe configured), "ready", or "unavailable" (configured but off: every score is unknown). The
    reason a probe is off is in the log; a label keeps to a few fixed values."""
    scorer = gate.firewall.scorer
    if scorer is None:
        return "absent"
    # ProbeScorer.status is "ready" or why it is off; another Scorer without one is taken as working.
    return "ready" if getattr(scorer, "status", "ready") == "ready" else "unavailable"


def watch_gate(metrics: Metrics, gate: Gate) -> Metrics:
    """Point the scrape-time gauges at this Gate: pending approvals, the policy digest, the probe's status, the audit
    log's unsynced commits."""
    wal = gate.writer.wal
    return metrics.watch(
        pending=lambda: pending_approvals(gate.approvals),
        policy_digest=lambda: gate.policy_digest,
        probe_status=lambda: probe_status(gate),
        unsynced_seconds=wal.unsynced_seconds if wal is not None else None,
    )


# -- the server -------------------------------------------------------------------------------------------------------


class AdminServer:
    """/healthz, /readyz and /metrics in a daemon thread. `start()` binds (ConfigError if it cannot), `stop()` ends."""

    def __init__(self, host: str, port: int, *, metrics: Metrics, readiness: Callable[[], Readiness]) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self._host, self._port = host, port
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return self._host, self._port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self) -> AdminServer:
        handler = _handler(self)
        server_class = http.server.ThreadingHTTPServer
        if ":" in self._host:
            server_class = type("_V6Server", (http.server.ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        try:
            self._server = server_class((self._host, self._port), handler)
        except OSError as error:
            raise ConfigError(
                f"the admin listener cannot bind {self._host}:{self._port}: {error.strerror or error}",
                hint="choose another address with --admin HOST:PORT, or turn it off with --admin off",
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="aegis-admin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server, self._thread = None, None

    def __enter__(self) -> AdminServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- pages --------------------------------------------------------------------------------------------------------

    def page(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`. Never raises."""
        route = path.split("?", 1)[0]
        try:
            if route == "/healthz":
                return 200, "text/plain; charset=utf-8", b"ok\n"
            if route == "/readyz":
                result = self.readiness()
                body = json.dumps(result.to_json(), sort_keys=True).encode() + b"\n"
                return (200 if result.ready else 503), "application/json", body
            if route == "/metrics":
                return 200, CONTENT_TYPE, self.metrics.render().encode()
        except Exception as error:
            log.exception("admin: %s failed", route)
            status = 503 if route == "/readyz" else 500
            return status, "text/plain; charset=utf-8", f"{route} failed: {type(error).__name__}\n".encode()
        return 404, "text/plain; charset=utf-8", b"not found: try /healthz, /readyz or /metrics\n"


def _handler(admin: AdminServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = HANDLER_TIMEOUT

        def log_message(self, *_args: Any) -> None:  # probes every few seconds would flood the log
            pass

        def version_string(self) -> str:
            return "aegis-admin"

        def do_GET(self) -> None:  # http.server's naming
            self._reply(*admin.page(self.path), head=False)

        def do_HEAD(self) -> None:
            self._reply(*admin.page(self.path), head=True)

        def _not_allowed(self) -> None:
            self._reply(405, "text/plain; charset=utf-8", b"only GET and HEAD\n", head=False, allow=True)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

        def _reply(self, status: int, content_type: str, body: bytes, *, head: bool, allow: bool = False) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.send_header("cache-control", "no-store")
            if allow:
                self.send_header("allow", "GET, HEAD")
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


def start_admin(
    listen: str, gate: Gate, metrics: Metrics, *, proxy: tuple[str, int] | None = None
) -> AdminServer | None:
    """The admin server at `listen` ("off": None) with the Gate's readiness checks and gauges; `proxy` is the agents'
    listen address, checked by /readyz too. Raises ConfigError if it cannot bind."""
    address = parse_admin(listen)
    if address is None:
        return None
    watch_gate(metrics, gate)
    readiness = GateReadiness(gate, metrics, proxy=proxy)
    return AdminServer(address[0], address[1], metrics=metrics, readiness=readiness).start()
