"""Proxy overhead, measured in one run: the same requests go direct, through bare mitmproxy, and through aegis.

    .venv/bin/python bench/proxy.py [--requests 400] [--audit-db URL]

Upstream: the scripted local LLM (aegis_proxy.demo.upstream), answering a chat completion that carries one tool
call (`ls -la`, allowed by the default policy, so every aegis request runs the whole path: parse, check, a durable
signed audit record, forward). Bare mitmproxy runs reverse mode to the same upstream with no addon of ours. Rounds
interleave the three paths so that machine noise hits them alike. Prints p50/p99 latency, requests/s (one client,
sequential) and the time to the first streamed text token, then aegis minus bare mitmproxy.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_proxy.demo.upstream import Reply, ScriptedLLM
from aegis_proxy.proxy.runner import free_port
from bench.common import percentile

BODY = {"model": "bench", "messages": [{"role": "user", "content": "list the files in the workspace"}]}
REPLY = Reply(text="Listing.", tool_calls=(("run_shell", {"cmd": "ls -la"}),))


@contextlib.contextmanager
def process(command: list[str], port: int, cwd: str) -> Iterator[str]:
    """A proxy in its own process (mitmproxy keeps global state: two masters in one process interfere)."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def timed_request(client: httpx.Client, url: str, llm: ScriptedLLM) -> float:
    llm.enqueue(REPLY)
    started = time.perf_counter()
    response = client.post(url, json=BODY)
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or "tool_calls" not in response.text:
        raise SystemExit(f"unexpected answer from {url}: {response.status_code} {response.text[:200]}")
    return elapsed


def time_to_first_token(client: httpx.Client, url: str, llm: ScriptedLLM) -> float:
    llm.enqueue(Reply(text="Sure, here is the listing you asked for.", tool_calls=REPLY.tool_calls))
    started = time.perf_counter()
    with client.stream("POST", url, json={**BODY, "stream": True}) as response:
        for line in response.iter_lines():
            if '"content": "Sure' in line or '"content":"Sure' in line:
                return time.perf_counter() - started
    raise SystemExit(f"no text token from {url}")


def summarise(name: str, samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50": percentile(ms, 0.50),
        "p99": percentile(ms, 0.99),
        "rps": len(ms) / (sum(ms) / 1000),
        "mean": statistics.fmean(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per path (default 400)")
    parser.add_argument("--audit-db", help="audit log URL for aegis (default: SQLite in a temp dir)")
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as data_dir, ScriptedLLM() as llm:
        bare_port, full_port, normal_port = free_port(), free_port(), free_port()
        bare_cmd = [str(bin_dir / "mitmdump"), "-q", "--mode", f"reverse:{llm.url}", "-p", str(bare_port)]

        def aegis_cmd(port: int, sync: str) -> list[str]:
            command = [str(bin_dir / "aegis"), "run", "--listen", f"127.0.0.1:{port}", "--route", f"openai={llm.url}"]
            command += ["--data-dir", str(Path(data_dir) / sync), "--audit-sync", sync]
            return command + (["--audit-db", args.audit_db] if args.audit_db else [])

        audit = args.audit_db or "SQLite (default)"
        with (
            process(bare_cmd, bare_port, data_dir) as bare,
            process(aegis_cmd(full_port, "full"), full_port, data_dir) as aegis_full,
            process(aegis_cmd(normal_port, "normal"), normal_port, data_dir) as aegis_normal,
            httpx.Client() as client,
        ):
            paths: dict[str, str] = {
                "direct": f"{llm.url}/v1/chat/completions",
                "mitmproxy": f"{bare}/v1/chat/completions",
                "aegis (audit.sync=full)": f"{aegis_full}/openai/v1/chat/completions",
                "aegis (audit.sync=normal)": f"{aegis_normal}/openai/v1/chat/completions",
            }
            measure: dict[str, Callable[[str], float]] = {
                "latency": lambda url: timed_request(client, url, llm),
                "ttft": lambda url: time_to_first_token(client, url, llm),
            }
            samples: dict[tuple[str, str], list[float]] = {(m, p): [] for m in measure for p in paths}
            for kind, run in measure.items():
                for url in paths.values():  # warm up connections and caches
                    for _ in range(20):
                        run(url)
                rounds = args.requests if kind == "latency" else max(50, args.requests // 4)
                for _ in range(rounds):
                    for name, url in paths.items():
                        samples[(kind, name)].append(run(url))

    print(f"proxy overhead, {args.requests} requests per path, one sequential client, audit log: {audit}")
    width = max(len(name) for name in paths) + 2
    print(f"{'path':<{width}}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'TTFT p50 ms':>14}")
    table = {name: summarise(name, samples[("latency", name)]) for name in paths}
    ttft = {name: percentile([s * 1000 for s in samples[("ttft", name)]], 0.5) for name in paths}
    for name in paths:
        row = table[name]
        print(f"{name:<{width}}{row['p50']:>10.2f}{row['p99']:>10.2f}{row['rps']:>10.0f}{ttft[name]:>14.2f}")
    for name in paths:
        if not name.startswith("aegis"):
            continue
        added_p50 = table[name]["p50"] - table["mitmproxy"]["p50"]
        added_p99 = table[name]["p99"] - table["mitmproxy"]["p99"]
        added_ttft = ttft[name] - ttft["mitmproxy"]
        print(
            f"{name} adds over bare mitmproxy: p50 {added_p50:+.2f} ms (target <= 0.5), p99 {added_p99:+.2f} ms "
            f"(target <= 2), time to first token {added_ttft:+.2f} ms"
        )


if __name__ == "__main__":
    main()
