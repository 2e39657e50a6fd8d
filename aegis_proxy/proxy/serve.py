"""From a configuration to a running firewall: the Gate (core), the addon and mitmproxy. Used by `aegis run`,
`aegis demo`, the end-to-end tests and the benchmark, so all of them run exactly the same assembly."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from aegis_proxy.admin import AdminServer, start_admin
from aegis_proxy.config import AegisConfig
from aegis_proxy.errors import ConfigError
from aegis_proxy.gate import Gate
from aegis_proxy.metrics import Metrics
from aegis_proxy.proxy.addon import AegisAddon
from aegis_proxy.proxy.runner import BackgroundProxy, ProxySettings, run
from aegis_proxy.proxy.wire import LLMProtocol

CA_FILE = "mitmproxy-ca-cert.pem"  # the public half of the CA, what clients trust in forward mode


def default_protocols() -> tuple[LLMProtocol, ...]:
    from aegis_proxy.proxy.anthropic import Anthropic
    from aegis_proxy.proxy.openai_chat import OpenAIChat
    from aegis_proxy.proxy.openai_responses import OpenAIResponses

    return (OpenAIChat(), OpenAIResponses(), Anthropic())


def ca_dir(config: AegisConfig) -> Path:
    return config.data_dir / "mitmproxy"


def proxy_settings(config: AegisConfig, *, quiet: bool = False) -> ProxySettings:
    return ProxySettings(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        mode=config.mode,
        routes=tuple(f"{name}={url}" for name, url in config.routes.items()),
        approval_timeout=config.approval_timeout,
        confdir=ca_dir(config),
        quiet=quiet,
    )


def build_addon(gate: Gate, config: AegisConfig) -> AegisAddon:
    from aegis_proxy.proxy.mcp_flow import McpFlows

    return AegisAddon(gate, default_protocols(), mcp=McpFlows.from_config(gate, config))


def serve(config: AegisConfig) -> None:
    """`aegis run`: serve until interrupted; the Gate is flushed and closed on the way out. The admin listener
    (/healthz, /readyz, /metrics) runs beside the proxy unless `admin = "off"`."""
    metrics = Metrics()
    gate = Gate.from_config(config, observer=metrics).start()
    admin: AdminServer | None = None
    try:
        admin = _admin(config, gate, metrics)
        run(proxy_settings(config), build_addon(gate, config))
    finally:
        if admin is not None:
            admin.stop()
        gate.close()


def _admin(config: AegisConfig, gate: Gate, metrics: Metrics) -> AdminServer | None:
    """Start the admin listener. A configured address that cannot be bound stops startup; the default address in use
    (a second `aegis run` on this machine) only disables it, with a warning."""
    try:
        return start_admin(config.admin, gate, metrics, proxy=(config.listen_host, config.listen_port))
    except ConfigError as error:
        if "admin" in config.model_fields_set:
            raise
        logging.getLogger(__name__).warning("aegis: admin listener disabled: %s", error.message)
        return None


@contextlib.contextmanager
def background(
    config: AegisConfig, *, quiet: bool = True, admin: bool = False
) -> Iterator[tuple[BackgroundProxy, Gate]]:
    """The whole firewall in a background thread, for the demo, the tests and the benchmark. With `admin`, also the
    admin listener at `config.admin` (off by default here: concurrent tests and demos would contend for its port)."""
    metrics = Metrics()
    gate = Gate.from_config(config, observer=metrics).start()
    try:
        with BackgroundProxy(proxy_settings(config, quiet=quiet), build_addon(gate, config)) as proxy:
            listener = None
            if admin:
                address = (proxy.settings.listen_host, proxy.settings.listen_port)
                listener = start_admin(config.admin, gate, metrics, proxy=address)
            try:
                yield proxy, gate
            finally:
                if listener is not None:
                    listener.stop()
    finally:
        gate.close()


def ensure_ca(config: AegisConfig) -> Path:
    """The CA certificate clients must trust in forward mode; created (as mitmproxy would) if it does not exist."""
    from mitmproxy.certs import CertStore

    directory = ca_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(directory, "mitmproxy", 2048)
    return directory / CA_FILE
