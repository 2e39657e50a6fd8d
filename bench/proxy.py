"""Proxy overhead, measured in one run: the same requests go direct, through bare mitmproxy, and through aegis.

    .venv/bin/python bench/proxy.py [--requests 400] [--clients 1] [--back-to-back 1] [--turns 0] [--new-result KB]
                                    [--stream] [--probe off] [--audit-db URL] [--compare DIR]
                                    [--compare-sync full|normal]

Upstream: the scripted local LLM (aegis_proxy.demo.upstream), answering a chat completion that carries one tool
call (`ls -la`, allowed by the default policy, so every aegis request runs the whole path: parse, check, a durable
signed audit record, forward). Bare mitmproxy runs reverse mode to the same upstream with no addon of ours, given
what `aegis run` gives itself (SSE passed on as it arrives, lazy upstream connections, gc.freeze once running);
aegis runs without its admin listener (`--admin off`), which bare mitmproxy has no counterpart of.
Rounds interleave the paths so that machine noise hits them alike. Prints p50/p99 latency, requests/s (one client,
sequential; `--clients K`: K clients send at once in each round, so that requests/s shows throughput under load), the
time to the first streamed text token (each stream read to its end, so connections stay open) and each proxy's CPU time
per request (steadier than latency on a shared machine; all threads, and the event loop's thread alone), then aegis
minus bare mitmproxy. `--turns N` puts N earlier tool-call turns (user request, assistant call, 1 KB tool result; about
1.3 KB each) before the request's user message, as an agent's conversation grows: parsing the request costs more.
`--new-result KB`: every request's conversation ends with a tool result of about KB kilobytes that no earlier request
carried (a directory listing), as an agent's grows by one per call: the firewall's provenance pass has a new message
to analyse.
`--back-to-back N`: in each latency round every path gets N requests in a row instead of one, so that each proxy
runs as when it is kept busy (its code and data stay in the CPU's caches; its background work, the audit writer's
chaining and checkpoints, falls inside its own turn when N is large, 100 say) rather than as when it idles between
calls, as with N = 1, where each proxy waits for the others' requests and meets cold caches every time.
`--stream`: the latency rounds ask for streamed answers (read to the end, where the tool call comes out once decided).
`--compare DIR` (repeatable) adds aegis run from another tree, e.g. the previous commit: a change's effect in one run.
On a shared machine run it as `chrt -f 10 python bench/proxy.py ...` so that other jobs do not preempt it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_proxy.demo.upstream import Reply, ScriptedLLM
from aegis_proxy.proxy.runner import free_port
from bench.common import percentile

BODY = {"model": "bench", "messages": [{"role": "user", "content": "list the files in the workspace"}]}


def request_body(turns: int, new_result: int | None = None, new_kb: float = 1.0) -> dict[str, Any]:
    """BODY after `turns` earlier tool-call turns of the same conversation; with `new_result` (a serial number), one
    more turn whose tool result (a directory listing of about `new_kb` KB) no earlier request carried, as an agent's
    conversation grows by one new tool result per call."""
    earlier: list[dict[str, Any]] = []
    for n in range(turns):
        earlier.extend(_turn(n, "read_file", '{"path": "a.py"}', "def f(x):\n    return x + 1\n" * 40))
    if new_result is not None:
        lines = max(1, round(new_kb * 1024 / 54))  # a listing line is about 54 characters
        listing = "".join(
            f"-rw-r--r-- 1 dev dev {4096 + i} Nov 29 12:00 module_{new_result}_{i}.py\n" for i in range(lines)
        )
        earlier.extend(_turn(turns, "run_shell", '{"cmd": "ls -l src"}', listing))
    return {**BODY, "messages": [*earlier, *BODY["messages"]]}


def _turn(n: int, tool: str, arguments: str, result: str) -> list[dict[str, Any]]:
    call = {"id": f"call_{n}", "type": "function", "function": {"name": tool, "arguments": arguments}}
    return [
        {"role": "user", "content": f"step {n}: read the next module and summarise it"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{n}", "content": result},
    ]


REPLY = Reply(text="Listing.", tool_calls=(("run_shell", {"cmd": "ls -la"}),))
_SERIAL = itertools.count()


def varied_reply() -> Reply:
    """REPLY with a call of its own (another directory each time): the probe caches scores by content, so with the
    probe on every request must bring a call it has not scored."""
    return Reply(text=REPLY.text, tool_calls=(("run_shell", {"cmd": f"ls -la /srv/{next(_SERIAL)}"}),))


# Bare mitmproxy gets what `aegis run` gives itself and is not ours to measure, so that the comparison isolates the work
# aegis adds: streamed (SSE) answers passed on as they arrive, as aegis passes text deltas (mitmproxy would otherwise
# buffer the whole stream, and bare mitmproxy's time to first token would be the whole answer's); the loaded code moved
# out of the collector's reach once running (gc.freeze, as runner.run does); lazy upstream connections (aegis picks
# the upstream per request). Otherwise it is `mitmdump -q`.
LEAN = "mitmproxy, aegis's addons"
BARE_ADDON = """import gc


class Bare:
    def running(self):
        gc.collect()
        gc.freeze()

    def responseheaders(self, flow):
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True


addons = [Bare()]
"""
# The same bare addon in mitmproxy loaded as `aegis run` loads it (runner.proxy_addons: 8 of mitmdump's 34 addons):
# aegis minus this is the work of aegis's own addon alone; aegis minus mitmdump is what a user sees against mitmproxy.
LEAN_MITMPROXY = """import asyncio, sys
from mitmproxy import options
from mitmproxy.master import Master
from aegis_proxy.proxy.runner import proxy_addons
sys.path.insert(0, sys.argv[3])
from bare_addon import Bare


async def main():
    opts = options.Options()
    master = Master(opts)
    master.addons.add(*proxy_addons(), Bare())
    opts.update(mode=[f"reverse:{sys.argv[1]}"], listen_host="127.0.0.1", listen_port=int(sys.argv[2]))
    opts.update(connection_strategy="lazy")
    await master.run()


asyncio.run(main())
"""


@dataclasses.dataclass(frozen=True)
class Proxy:
    url: str
    pid: int


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """User + system CPU time of a process so far, all threads and its main thread (Linux /proc), None elsewhere. On a
    shared machine the CPU a proxy spends per request is steadier than its latency, which also holds the time it waited
    for a core. The main thread runs mitmproxy's event loop; aegis's other threads are the audit writer's, above all."""

    def ticks(stat: Path) -> int:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    try:
        every, main = ticks(Path(f"/proc/{pid}/stat")), ticks(Path(f"/proc/{pid}/task/{pid}/stat"))
    except OSError:
        return None
    return every / os.sysconf("SC_CLK_TCK"), main / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def process(command: list[str], port: int, cwd: str, env: dict[str, str] | None = None) -> Iterator[Proxy]:
    """A proxy in its own process (mitmproxy keeps global state: two masters in one process interfere)."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{command[0]} exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{command[0]} did not start listening")
            time.sleep(0.05)
        yield Proxy(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def timed_request(
    client: httpx.Client,
    url: str,
    llm: ScriptedLLM,
    next_body: Callable[[], dict[str, Any]],
    reply: Callable[[], Reply],
) -> float:
    """One request's latency; a streamed one (`"stream": true` in its body) is read to its end, where its tool call
    comes out once decided."""
    body = next_body()
    llm.enqueue(reply())
    started = time.perf_counter()
    if body.get("stream"):
        with client.stream("POST", url, json=body) as response:
            status, text = response.status_code, response.read().decode()
    else:
        response = client.post(url, json=body)
        status, text = response.status_code, response.text
    elapsed = time.perf_counter() - started
    if status != 200 or "tool_calls" not in text:
        raise SystemExit(f"unexpected answer from {url}: {status} {text[:200]}")
    return elapsed


def time_to_first_token(
    client: httpx.Client, url: str, llm: ScriptedLLM, next_body: Callable[[], dict[str, Any]]
) -> float:
    body = next_body()
    llm.enqueue(Reply(text="Sure, here is the listing you asked for.", tool_calls=REPLY.tool_calls))
    started = time.perf_counter()
    first: float | None = None
    with client.stream("POST", url, json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if first is None and ('"content": "Sure' in line or '"content":"Sure' in line):
                first = time.perf_counter() - started
        # Read to the end (the tool call is decided and audited after the text): the connection stays open for the
        # next request, as with the other measurements, instead of every stream paying a new connection.
    if first is None:
        raise SystemExit(f"no text token from {url}")
    return first


def burst(
    pool: ThreadPoolExecutor,
    clients: list[httpx.Client],
    url: str,
    llm: ScriptedLLM,
    next_body: Callable[[], dict[str, Any]],
    reply: Callable[[], Reply],
) -> list[float]:
    """One request from each client at the same time; their latencies. One client sends from this thread: no hand-off
    in its requests/s."""
    if len(clients) == 1:
        return [timed_request(clients[0], url, llm, next_body, reply)]
    return list(pool.map(lambda client: timed_request(client, url, llm, next_body, reply), clients))


def summarise(samples: list[float], wall: float, clients: int) -> dict[str, float]:
    """Latency percentiles and requests/s: over the requests' own time for one client (as before --clients), over the
    rounds' wall time for several (requests overlap)."""
    ms = [s * 1000 for s in samples]
    return {
        "p50": percentile(ms, 0.50),
        "p99": percentile(ms, 0.99),
        "rps": len(ms) / (sum(ms) / 1000 if clients == 1 else wall),
        "mean": statistics.fmean(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="rounds per path (default 400)")
    parser.add_argument(
        "--clients", type=int, default=1, help="clients sending at once in each latency round (default 1; TTFT: 1)"
    )
    parser.add_argument(
        "--back-to-back",
        type=int,
        default=1,
        metavar="N",
        help="latency requests each path gets in a row per round (default 1: paths take turns request by request)",
    )
    parser.add_argument(
        "--turns", type=int, default=0, help="earlier tool-call turns in each request's conversation (default 0)"
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="latency rounds ask for streamed answers (SSE, read to the end, where the decided tool call comes out)",
    )
    parser.add_argument("--audit-db", help="audit log URL for aegis (default: SQLite in a temp dir)")
    parser.add_argument("--probe", default="off", help="aegis's hidden-state probe: off (default), minilm, ...")
    parser.add_argument(
        "--compare",
        metavar="DIR",
        action="append",
        default=[],
        help="also run aegis (audit.sync=normal) from the aegis_proxy package in DIR, e.g. a checkout of the previous "
        "commit: before and after measured in one run (repeatable)",
    )
    parser.add_argument(
        "--compare-sync", choices=["full", "normal"], default="normal", help="audit.sync of the --compare runs"
    )
    parser.add_argument(
        "--new-result",
        type=float,
        default=0,
        metavar="KB",
        help="every request's conversation ends with a tool result of about KB kilobytes that no earlier request "
        "carried (after --turns turns; default 0: none)",
    )
    args = parser.parse_args()
    if args.back_to_back < 1:
        parser.error("--back-to-back must be at least 1")

    def build(new_result: int | None) -> dict[str, Any]:
        built = request_body(args.turns, new_result, args.new_result)
        return {**built, "stream": True} if args.stream else built

    body = build(0 if args.new_result else None)
    serial = itertools.count(1)

    def next_body() -> dict[str, Any]:
        return build(next(serial)) if args.new_result else body

    reply: Callable[[], Reply] = varied_reply if args.probe != "off" else lambda: REPLY

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as data_dir, ScriptedLLM() as llm:
        bare_port, lean_port, full_port, normal_port = free_port(), free_port(), free_port(), free_port()
        bare_addon = Path(data_dir) / "bare_addon.py"
        bare_addon.write_text(BARE_ADDON)
        bare_cmd = [str(bin_dir / "mitmdump"), "-q", "--mode", f"reverse:{llm.url}", "-p", str(bare_port)]
        bare_cmd += ["--set", "connection_strategy=lazy", "-s", str(bare_addon)]
        lean_script = Path(data_dir) / "lean_mitmproxy.py"
        lean_script.write_text(LEAN_MITMPROXY)
        lean_cmd = [sys.executable, str(lean_script), llm.url, str(lean_port), data_dir]

        def aegis_cmd(port: int, sync: str, name: str = "") -> list[str]:
            command = [str(bin_dir / "aegis"), "run", "--listen", f"127.0.0.1:{port}", "--route", f"openai={llm.url}"]
            command += ["--data-dir", str(Path(data_dir) / (name or sync)), "--audit-sync", sync, "--admin", "off"]
            command += ["--probe", args.probe]
            return command + (["--audit-db", args.audit_db] if args.audit_db else [])

        audit = args.audit_db or "SQLite (default)"
        with (
            process(bare_cmd, bare_port, data_dir) as bare,
            process(lean_cmd, lean_port, data_dir) as lean,
            process(aegis_cmd(full_port, "full"), full_port, data_dir) as aegis_full,
            process(aegis_cmd(normal_port, "normal"), normal_port, data_dir) as aegis_normal,
            contextlib.ExitStack() as stack,
            httpx.Client() as client,
            ThreadPoolExecutor(args.clients) as pool,
        ):
            clients = [client] + [stack.enter_context(httpx.Client()) for _ in range(args.clients - 1)]
            paths: dict[str, str] = {
                "direct": f"{llm.url}/v1/chat/completions",
                "mitmproxy": f"{bare.url}/v1/chat/completions",
                LEAN: f"{lean.url}/v1/chat/completions",
                "aegis (audit.sync=full)": f"{aegis_full.url}/openai/v1/chat/completions",
                "aegis (audit.sync=normal)": f"{aegis_normal.url}/openai/v1/chat/completions",
            }
            pids = {"mitmproxy": bare.pid, LEAN: lean.pid, "aegis (audit.sync=full)": aegis_full.pid}
            pids["aegis (audit.sync=normal)"] = aegis_normal.pid
            for n, tree in enumerate(args.compare):
                other_port, name = free_port(), f"aegis @{Path(tree).name} ({args.compare_sync})"
                env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
                other = stack.enter_context(
                    process(aegis_cmd(other_port, args.compare_sync, f"compare{n}"), other_port, data_dir, env)
                )
                paths[name] = f"{other.url}/openai/v1/chat/completions"
                pids[name] = other.pid
            measure: dict[str, Callable[[str], list[float]]] = {
                "latency": lambda url: burst(pool, clients, url, llm, next_body, reply),
                "ttft": lambda url: [time_to_first_token(client, url, llm, next_body)],
            }
            samples: dict[tuple[str, str], list[float]] = {(m, p): [] for m in measure for p in paths}
            wall: dict[str, float] = dict.fromkeys(paths, 0.0)  # seconds spent in latency rounds, per path
            cpu_ms: dict[str, tuple[float, float] | None] = dict.fromkeys(paths)  # (all threads, event loop)
            for kind, run in measure.items():
                for url in paths.values():  # warm up connections and caches
                    for _ in range(20):
                        run(url)
                rounds = args.requests if kind == "latency" else max(50, args.requests // 4)
                in_a_row = args.back_to_back if kind == "latency" else 1
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                for first in range(0, rounds, in_a_row):
                    for name, url in paths.items():
                        for _ in range(min(in_a_row, rounds - first)):
                            started = time.perf_counter()
                            samples[(kind, name)].extend(run(url))
                            wall[name] += time.perf_counter() - started
                if kind == "latency":
                    sent = rounds * args.clients
                    for name, pid in pids.items():
                        before, after = cpu_before[name], cpu_seconds(pid)
                        if before is not None and after is not None:
                            cpu_ms[name] = (
                                (after[0] - before[0]) * 1000 / sent,
                                (after[1] - before[1]) * 1000 / sent,
                            )

    who = "one sequential client" if args.clients == 1 else f"{args.clients} clients at once"
    who += f", {args.back_to_back} requests in a row per path" if args.back_to_back > 1 else ""
    size = f", {args.turns} earlier turns ({len(json.dumps(body)) / 1024:.0f} KB requests)" if args.turns else ""
    size += f", a new {args.new_result:g} KB tool result in each" if args.new_result else ""
    size += ", streamed answers" if args.stream else ""
    size += f", probe {args.probe}" if args.probe != "off" else ""
    print(f"proxy overhead, {args.requests * args.clients} requests per path, {who}{size}, audit log: {audit}")
    width = max(len(name) for name in paths) + 2
    print(f"{'path':<{width}}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'TTFT p50 ms':>14}{'CPU ms/req':>12}{'loop':>8}")
    table = {name: summarise(samples[("latency", name)], wall[name], args.clients) for name in paths}
    ttft = {name: percentile([s * 1000 for s in samples[("ttft", name)]], 0.5) for name in paths}
    for name in paths:
        row, cpu = table[name], cpu_ms[name]
        shown = "-       -" if cpu is None else f"{cpu[0]:.2f}{cpu[1]:>8.2f}"
        print(f"{name:<{width}}{row['p50']:>10.2f}{row['p99']:>10.2f}{row['rps']:>10.0f}{ttft[name]:>14.2f}{shown:>20}")
    for base, label in (("mitmproxy", "bare mitmproxy (mitmdump)"), (LEAN, "mitmproxy with aegis's addons")):
        for name in paths:
            if not name.startswith("aegis"):
                continue
            added_p50 = table[name]["p50"] - table[base]["p50"]
            added_p99 = table[name]["p99"] - table[base]["p99"]
            added_ttft = ttft[name] - ttft[base]
            cpu, bare_cpu = cpu_ms[name], cpu_ms[base]
            added_cpu = (
                ""
                if cpu is None or bare_cpu is None
                else f", CPU {cpu[0] - bare_cpu[0]:+.2f} ms/req (event loop {cpu[1] - bare_cpu[1]:+.2f}, other "
                f"threads {cpu[0] - cpu[1] - (bare_cpu[0] - bare_cpu[1]):+.2f})"
            )
            print(
                f"{name} adds over {label}: p50 {added_p50:+.2f} ms (target <= 0.5), p99 {added_p99:+.2f} ms "
                f"(target <= 2), time to first token {added_ttft:+.2f} ms{added_cpu}"
            )


if __name__ == "__main__":
    main()
