"""Where a request's time goes inside the proxy: aegis against mitmproxy with aegis's addons, phase by phase.

    .venv/bin/python bench/timeline.py [--requests 2000] [--sync full|normal] [--compare DIR]

bench/proxy.py says how much aegis adds; this says where. It runs proxies side by side on the scripted local LLM of
bench/proxy.py (the same chat completion with one allowed tool call): the lean mitmproxy (mitmproxy loaded as `aegis
run` loads it, with the bare addon), `aegis run`'s whole assembly (`serve`: the Gate, the audit log, the addon; probe
and admin listener off), and with `--compare DIR` (repeatable) the same from another tree, e.g. the previous commit or
a change being tried. Requests take turns, so that every proxy runs as cold as in the interleaved rounds of
bench/proxy.py (the more proxies, the colder). Each proxy gets two timing addons, one before every other addon and one
after, and mitmproxy's own timestamps mark the bytes; per phase the median microseconds of each proxy (and of each
aegis minus the lean mitmproxy) are printed:

  read request     the request's first byte to the end of its body (the client's two writes, mitmproxy's reading)
  before hooks     the end of the request body to the first request hook
  request hooks    every addon's request hook (aegis: routing, the strict parse, the call context)
  upstream         the last request hook to the answer's first byte (forwarding; the upstream's own work)
  read answer      the answer's first to last byte
  before hooks     the end of the answer to the first response hook
  response hooks   every addon's response hook (aegis: each call decided and made durable, the rewrite)

and each proxy's p50 latency as the client sees it. The medians of the phases need not add up to the latency's.
On a shared machine run it as `chrt -f 10 python bench/timeline.py` so that other jobs do not preempt it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_proxy.demo.upstream import ScriptedLLM
from aegis_proxy.proxy.runner import free_port
from bench.common import percentile
from bench.proxy import BARE_ADDON, BODY, REPLY, process

LEAN_NAME = "lean mitmproxy"
PHASES = (
    "read request",
    "before hooks",
    "request hooks",
    "upstream",
    "read answer",
    "before hooks ",  # the answer's; a trailing space keeps the two names apart as keys
    "response hooks",
)
# The two timing addons. `Last` writes the rows to $TIMELINE_OUT once it has $TIMELINE_ROWS of them.
TIMING_ADDON = """import json, os, time

ROWS = []
EXPECTED = int(os.environ["TIMELINE_ROWS"])


class First:
    def request(self, flow):
        flow.metadata["timeline"] = [time.time()]

    def response(self, flow):
        flow.metadata["timeline"].append(time.time())


class Last:
    def request(self, flow):
        flow.metadata["timeline"].append(time.time())

    def response(self, flow):
        ended = time.time()
        first_request, last_request, first_response = flow.metadata["timeline"]
        request, response = flow.request, flow.response
        ROWS.append([
            request.timestamp_end - request.timestamp_start,
            first_request - request.timestamp_end,
            last_request - first_request,
            response.timestamp_start - last_request,
            response.timestamp_end - response.timestamp_start,
            first_response - response.timestamp_end,
            ended - first_response,
        ])
        if len(ROWS) == EXPECTED:
            with open(os.environ["TIMELINE_OUT"] + ".part", "w") as out:
                json.dump(ROWS, out)
            os.replace(os.environ["TIMELINE_OUT"] + ".part", os.environ["TIMELINE_OUT"])
"""
# mitmproxy as `aegis run` loads it, the bare addon between the timing addons.
LEAN = """import asyncio, gc, sys
from mitmproxy import options
from mitmproxy.master import Master
from aegis_proxy.proxy.runner import proxy_addons
sys.path.insert(0, sys.argv[3])
from bare_addon import Bare
from timing_addon import First, Last


async def main():
    master = Master(options.Options())
    master.addons.add(First(), *proxy_addons(), Bare(), Last())
    master.options.update(mode=[f"reverse:{sys.argv[1]}"], listen_host="127.0.0.1", listen_port=int(sys.argv[2]))
    master.options.update(connection_strategy="lazy")
    await master.run()


asyncio.run(main())
"""
# `aegis run`'s assembly (serve), the timing addons placed around it: First before mitmproxy's addons, Last after
# ours (runner.run builds the master through these two module functions).
AEGIS = """import sys
sys.path.insert(0, sys.argv[3])
from timing_addon import First, Last
from aegis_proxy.config import load_config
from aegis_proxy.proxy import runner
from aegis_proxy.proxy.serve import serve

mitmproxy_addons, build_master = runner.proxy_addons, runner.build_master
runner.proxy_addons = lambda: [First(), *mitmproxy_addons()]


def timed_master(settings, addon):
    master = build_master(settings, addon)
    master.addons.add(Last())
    return master


runner.build_master = timed_master
overrides = {
    "listen": f"127.0.0.1:{sys.argv[2]}", "routes": {"openai": sys.argv[1]}, "data_dir": sys.argv[5],
    "audit.sync": sys.argv[4], "admin": "off", "probe.backbone": "off",
}
serve(load_config(None, overrides))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per proxy, after 200 to warm up")
    parser.add_argument("--sync", choices=["full", "normal"], default="full", help="aegis's audit.sync")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="DIR", help="also aegis from the aegis_proxy package in DIR"
    )
    args = parser.parse_args()
    warm_up = 200
    root = Path(__file__).resolve().parent.parent
    trees = {LEAN_NAME: root, "aegis": root} | {f"aegis @{Path(d).name}": Path(d).resolve() for d in args.compare}
    with tempfile.TemporaryDirectory() as work, ScriptedLLM() as llm, contextlib.ExitStack() as stack:
        for name, text in (("bare_addon.py", BARE_ADDON), ("timing_addon.py", TIMING_ADDON), ("lean.py", LEAN)):
            Path(work, name).write_text(text)
        Path(work, "aegis_timed.py").write_text(AEGIS)
        urls: dict[str, str] = {}
        outputs: dict[str, Path] = {}
        for n, (name, tree) in enumerate(trees.items()):
            port, outputs[name] = free_port(), Path(work, f"timeline{n}.json")
            if name == LEAN_NAME:
                command, path = [sys.executable, str(Path(work, "lean.py")), llm.url, str(port), work], "/v1"
            else:
                command = [sys.executable, str(Path(work, "aegis_timed.py")), llm.url, str(port), work, args.sync]
                command.append(f"{work}/data{n}")
                path = "/openai/v1"
            env = {
                **os.environ,
                "PYTHONPATH": str(tree),
                "TIMELINE_OUT": str(outputs[name]),
                "TIMELINE_ROWS": str(warm_up + args.requests),
            }
            urls[name] = stack.enter_context(process(command, port, work, env)).url + path + "/chat/completions"
        latency: dict[str, list[float]] = {name: [] for name in trees}
        with httpx.Client() as client:
            for n in range(warm_up + args.requests):
                for name, url in urls.items():
                    llm.enqueue(REPLY)
                    started = time.perf_counter()
                    response = client.post(url, json=BODY)
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    if n >= warm_up:
                        latency[name].append(elapsed * 1e6)
                    llm.requests.clear()
        rows = {name: _rows(path)[warm_up:] for name, path in outputs.items()}
    medians = {
        name: [statistics.median(row[i] for row in table) * 1e6 for i in range(len(PHASES))]
        for name, table in rows.items()
    }
    p50 = {name: percentile(values, 0.5) for name, values in latency.items()}
    print(f"where the time goes: {args.requests} requests per proxy, taking turns; aegis audit.sync={args.sync}")
    print(f"median microseconds per phase; (+N): minus {LEAN_NAME}")
    width = max(max(len(name) for name in trees), 14) + 2
    print(f"{'phase':<20}" + "".join(f"{name:>{width}}" for name in trees))
    lean = medians[LEAN_NAME]
    for i, phase in enumerate(PHASES):
        cells = [
            f"{values[i]:.0f}" + ("" if name == LEAN_NAME else f" ({values[i] - lean[i]:+.0f})")
            for name, values in medians.items()
        ]
        print(f"{phase.strip():<20}" + "".join(f"{cell:>{width}}" for cell in cells))
    cells = [
        f"{p50[name]:.0f}" + ("" if name == LEAN_NAME else f" ({p50[name] - p50[LEAN_NAME]:+.0f})") for name in trees
    ]
    print(f"{'latency p50':<20}" + "".join(f"{cell:>{width}}" for cell in cells))


def _rows(path: Path, timeout: float = 10.0) -> list[Any]:
    """The timing addon's rows, written once it has seen every request (its response hook may run just after the
    client has its answer)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no timeline from {path.name}: the proxy did not see every request")
        time.sleep(0.05)
    rows: list[Any] = json.loads(path.read_text())
    return rows


if __name__ == "__main__":
    main()
