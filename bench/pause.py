"""Why our work costs more inside the running proxy than timed alone: time passing between calls.

Usage: python bench/pause.py [--calls 400] [--pauses 0.5,1,3]

Times two pieces of the proxy's per-call work, each on the same input over and over: reading a chat completion's tool
call (`OpenAIChat.tool_calls`, a 300-byte answer) and the firewall's check of that call in its conversation
(`Firewall.check`). Each is timed back to back, then after a pause of P ms before every call, the pause either slept
(`time.sleep`, the thread gives up its core, as the proxy does while it waits for the network) or spent spinning in a
loop (the thread keeps its core and touches almost no memory). Prints the median per call in microseconds.

In the proxy, a call's pieces run once per request, several milliseconds apart. If a piece costs several times more
after a pause even when the thread spun through it, the difference is the machine's (most likely caches and
predictors lost while time passes: other tenants of a shared core, the hypervisor), not work of ours or mitmproxy's
evicting it, and it applies to mitmproxy's own code alike; bench/proxy.py holds it constant by interleaving the paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_proxy.firewall import Firewall
from aegis_proxy.models import CallContext, Message, Role
from aegis_proxy.proxy.openai_chat import OpenAIChat

CALL = {"name": "run_shell", "arguments": '{"cmd": "ls -la"}'}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "bench",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": "Listing.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": CALL}],
            },
        }
    ],
}


def pause(milliseconds: float, spin: bool) -> None:
    if not milliseconds:
        return
    if not spin:
        time.sleep(milliseconds / 1000)
        return
    end = time.perf_counter() + milliseconds / 1000
    while time.perf_counter() < end:
        pass


def median_us(work: Callable[[], object], calls: int, milliseconds: float, spin: bool) -> float:
    for _ in range(20):
        work()
    timings = []
    for _ in range(calls):
        pause(milliseconds, spin)
        started = time.perf_counter_ns()
        work()
        timings.append(time.perf_counter_ns() - started)
    return statistics.median(timings) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="timed calls per cell (default 400)")
    parser.add_argument("--pauses", default="0.5,1,3", help="pauses in ms, comma-separated (default 0.5,1,3)")
    args = parser.parse_args()
    pauses = [float(p) for p in args.pauses.split(",")]
    protocol = OpenAIChat()
    body = json.dumps(ANSWER).encode()
    call = protocol.tool_calls(body)[0]
    user = Message(role=Role.USER, content="list the files in the workspace")
    context = CallContext(session_id=None, messages=(user,))
    firewall = Firewall()
    work: dict[str, Callable[[], object]] = {
        "read the answer's call": lambda: protocol.tool_calls(body),
        "firewall check": lambda: firewall.check(call, context),
    }
    print(f"median us per call, {args.calls} calls per cell; the pause before each call slept or spun")
    header = "".join(f"{f'{p:g} ms slept':>14s}{f'{p:g} ms spun':>13s}" for p in pauses)
    print(f"{'work':24s}{'back to back':>14s}{header}")
    for name, run in work.items():
        row = f"{median_us(run, args.calls, 0, False):14.1f}"
        for p in pauses:
            row += f"{median_us(run, args.calls, p, False):14.1f}{median_us(run, args.calls, p, True):13.1f}"
        print(f"{name:24s}{row}")


if __name__ == "__main__":
    main()
