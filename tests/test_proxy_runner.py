"""The embedded mitmproxy: which of mitmproxy's addons aegis runs, and that the master built from them proxies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mitmproxy.addons import default_addons

from aegis_proxy.config import load_config
from aegis_proxy.gate import Gate
from aegis_proxy.proxy import serve
from aegis_proxy.proxy.runner import build_master, proxy_addons

# What mitmdump loads and aegis leaves out, and why each stays out: none is configured by aegis, and these change or
# record traffic after our decision, or serve something no route asks for.
LEFT_OUT = {
    "Browser",  # opens a browser at the proxy
    "StripDnsHttpsRecords",  # DNS mode
    "BlockList",  # block_list rules
    "AntiCache",  # rewrites request headers
    "AntiComp",  # rewrites request headers
    "ClientPlayback",  # replays flows
    "CommandHistory",  # the console's
    "Comment",  # flow comments (console)
    "Cut",  # console commands
    "Export",  # console commands
    "Onboarding",  # the mitm.it app (`aegis ca` tells where the CA is)
    "ProxyAuth",  # proxyauth option
    "DnsResolver",  # DNS mode
    "ScriptLoader",  # -s scripts: arbitrary code in the proxy
    "ServerPlayback",  # answers from recorded flows instead of the upstream
    "MapRemote",  # rewrites URLs
    "MapLocal",  # answers from local files
    "ModifyBody",  # rewrites bodies
    "ModifyHeaders",  # rewrites headers
    "StickyAuth",  # replays credentials
    "StickyCookie",  # replays cookies
    "Save",  # writes flows to disk
    "SaveHar",  # writes flows to disk
    "UpstreamAuth",  # upstream mode
}


def test_aegis_runs_every_default_addon_it_does_not_leave_out() -> None:
    ours = {type(addon).__name__ for addon in proxy_addons()}
    mitmdump = {type(addon).__name__ for addon in default_addons()}
    assert ours - mitmdump == {"ErrorCheck"}  # mitmdump adds it outside default_addons
    assert mitmdump - ours == LEFT_OUT  # a new mitmproxy addon must be looked at, not silently dropped or loaded


def test_the_master_runs_those_addons_and_ours(tmp_path: Path) -> None:
    config = load_config(None, {"data_dir": str(tmp_path / "aegis"), "routes": {"openai": "http://127.0.0.1:9"}})

    async def chain() -> list[str]:
        with Gate.from_config(config) as gate:
            addon = serve.build_addon(gate, config)
            master = build_master(serve.proxy_settings(config, quiet=True), addon)
            return [type(a).__name__ for a in master.addons.chain]

    names = asyncio.run(chain())
    assert names == [type(addon).__name__ for addon in proxy_addons()] + ["AegisAddon"]


@pytest.mark.parametrize("option", ["map_local", "modify_body", "scripts", "save_stream_file", "server_replay"])
def test_options_that_would_change_traffic_after_the_decision_do_not_exist(tmp_path: Path, option: str) -> None:
    config = load_config(None, {"data_dir": str(tmp_path / "aegis"), "routes": {"openai": "http://127.0.0.1:9"}})

    async def options() -> set[str]:
        with Gate.from_config(config) as gate:
            master = build_master(serve.proxy_settings(config, quiet=True), serve.build_addon(gate, config))
            return set(master.options.keys())

    names = asyncio.run(options())
    assert "listen_port" in names and "allow_hosts" in names
    assert option not in names
