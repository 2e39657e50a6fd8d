"""Embedding mitmproxy: `aegis run` in the foreground, or a proxy in a background thread (tests, demo, benchmark).

Modes:
  reverse    the agent's base_url points at us; /NAME/... is forwarded to the route NAME's URL
  forward    the agent sets HTTPS_PROXY; only the routes' hosts are decrypted (with our CA), the rest is tunnelled
mitmproxy's own transparent mode also works (mode "transparent", with the OS redirecting traffic): routes are then
looked up as in forward mode. docs/proxy.md says how.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from mitmproxy import options
from mitmproxy.addons import block, core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig, update_alt_svc
from mitmproxy.master import Master

from aegis_proxy.errors import ConfigError
from aegis_proxy.proxy import stream_end
from aegis_proxy.proxy.addon import AegisAddon
from aegis_proxy.proxy.routes import RouteTable

log = logging.getLogger(__name__)

# Reverse mode needs an upstream spec; every request is re-targeted at its route in the request hook, and lazy
# connections mean nothing connects here. Should a request ever escape routing it goes to a closed port and fails.
_UNROUTED = "reverse:http://127.0.0.1:1"
MODES = ("reverse", "forward", "transparent")


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    mode: str = "reverse"
    routes: tuple[str, ...] = ()
    approval_timeout: float = 300.0
    confdir: Path = Path(".aegis") / "mitmproxy"  # where mitmproxy keeps its CA (forward mode)
    upstream_ca: Path | None = None  # extra CA bundle to verify upstreams with (self-hosted models); None: system CAs
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}", hint=f"use one of: {', '.join(MODES)}")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"listen port {self.listen_port} is out of range", hint="use 1-65535, or 0 for any")
        RouteTable.parse(self.routes)  # refuse bad routes before anything starts


def mitmproxy_options(settings: ProxySettings) -> dict[str, Any]:
    mode = {"reverse": _UNROUTED, "forward": "regular", "transparent": "transparent"}[settings.mode]
    values: dict[str, Any] = {
        "listen_host": settings.listen_host,
        "listen_port": settings.listen_port,
        "mode": [mode],
        "connection_strategy": "lazy",
        "confdir": str(settings.confdir),
        "aegis_routes": list(settings.routes),
        "aegis_approval_timeout": settings.approval_timeout,
        # The agent's HTTP/2 or HTTP/1 both work; keep-alive to upstreams is mitmproxy's.
        "stream_large_bodies": None,
    }
    if settings.upstream_ca is not None:
        values["ssl_verify_upstream_trusted_ca"] = str(settings.upstream_ca)
    if settings.mode != "reverse":
        # Only the routes' hosts are intercepted (TLS with our CA); everything else passes through untouched.
        values["allow_hosts"] = RouteTable.parse(settings.routes).intercepted_hosts()
    return values


def proxy_addons() -> list[Any]:
    """mitmproxy's own addons that aegis runs: what accepts, routes and encrypts connections, and guards the listener.

    mitmdump loads 26 more (replay, map/modify rules, sticky cookies and auth, scripts, saving flows, the mitm.it
    onboarding app, DNS): aegis sets none of their options, some would change traffic after our decision, and each
    one costs every request something, since mitmproxy calls every hook on every addon (one hook through mitmdump's
    35 addons: 87 us measured; a request goes through about ten hooks)."""
    return [
        core.Core(),  # option checks and flow commands
        block.Block(),  # mitmproxy's guard: clients from public addresses are refused unless block_global is off
        disable_h2c.DisableH2C(),  # h2c upgrade requests (addon._refuse_upgrades withdraws them too)
        proxyserver.Proxyserver(),  # listeners, modes, connections
        next_layer.NextLayer(),  # protocol detection; allow_hosts (forward mode decrypts only the routes' hosts)
        tlsconfig.TlsConfig(),  # the CA, certificates, upstream verification
        update_alt_svc.UpdateAltSvc(),  # reverse mode: an Alt-Svc header must not point clients past the proxy
        errorcheck.ErrorCheck(),  # a startup error ends `aegis run` with its message
    ]


def build_master(settings: ProxySettings, addon: AegisAddon) -> Master:
    """A mitmproxy master with our addon. Must be called inside the event loop that will run it."""
    stream_end.install()  # the addon awaits streamed calls' decisions in this hook
    settings.confdir.mkdir(parents=True, exist_ok=True)
    opts = options.Options()
    master = Master(opts, with_termlog=not settings.quiet)
    master.addons.add(*proxy_addons(), addon)
    opts.update(**mitmproxy_options(settings))
    return master


def run(settings: ProxySettings, addon: AegisAddon) -> None:
    """Run in the foreground until interrupted (`aegis run`)."""

    async def main() -> None:
        master = build_master(settings, addon)
        loop = asyncio.get_running_loop()
        # SIGTERM (docker stop, systemd, kubernetes) and Ctrl-C stop mitmproxy cleanly, so that the caller can
        # flush the audit writer before the process exits.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        # Everything loaded so far (policies, compiled patterns, mitmproxy) lives as long as the process: moving it
        # out of the collector's reach removes the 20-50 ms full-collection pauses from the request path.
        gc.collect()
        gc.freeze()
        await master.run()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackgroundProxy:
    """The proxy on its own event loop in a daemon thread; `url` is where agents connect. For tests, the demo and
    the benchmark: the same master and addon as `aegis run`."""

    def __init__(self, settings: ProxySettings, addon: AegisAddon) -> None:
        if settings.listen_port == 0:
            settings = dataclasses.replace(settings, listen_port=free_port())
        self.settings = settings
        self.addon = addon
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master: Master | None = None
        self._thread = threading.Thread(target=self._main, name="aegis-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.listen_host}:{self.settings.listen_port}"

    def start(self, timeout: float = 20.0) -> BackgroundProxy:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError("the proxy did not start in time", hint="is the port free?")
        if self._error is not None:
            raise ConfigError(f"the proxy did not start: {self._error}", hint="is the port free?") from self._error
        return self

    def _main(self) -> None:
        async def main() -> None:
            try:
                self._loop = asyncio.get_running_loop()
                self._loop.set_exception_handler(_quiet_cancellation)
                self._master = build_master(self.settings, self.addon)
                # mitmproxy's errorcheck exits the process on a startup error; here start() reports it instead.
                errorcheck = self._master.addons.get("errorcheck")
                if errorcheck is not None:
                    errorcheck.logger.uninstall()
                    self._master.addons.remove(errorcheck)
                task = asyncio.ensure_future(self._master.run())
                await _wait_listening(self._master, task)
            except BaseException as error:  # reported to start()
                self._error = error
                self._ready.set()
                return
            self._ready.set()
            await task

        asyncio.run(main())

    def stop(self) -> None:
        if self._loop is not None and self._master is not None:
            self._loop.call_soon_threadsafe(self._master.shutdown)
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Shutting down cancels open client connections; asyncio would print each cancellation as an error."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _wait_listening(master: Master, task: asyncio.Future[Any], timeout: float = 15.0) -> None:
    """Until mitmproxy's servers listen; raise what stopped them (a port in use, say)."""
    servers = master.addons.get("proxyserver").servers
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if task.done():
            task.result()  # raises what stopped the master
            raise ConfigError("the proxy stopped while starting", hint="see the log above")
        instances = list(servers)
        failures = [instance.last_exception for instance in instances if instance.last_exception is not None]
        if failures:
            raise ConfigError(f"the proxy cannot listen: {failures[0]}", hint="is the port free?")
        if instances and not servers.is_updating and all(instance.is_running for instance in instances):
            return
        if loop.time() > deadline:
            raise ConfigError("the proxy did not start listening in time", hint="see the log above")
        await asyncio.sleep(0.02)
