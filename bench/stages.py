"""Per-stage latency of the pure pipeline over the test corpus: where a call's time goes.

Usage: python bench/stages.py [--rounds 3] [--corpus tests/corpus] [--calls benign|attacks|all] [--cold]
Runs each stage of `Firewall.check` on its own (extract, targets, every default scanner, provenance) and then the whole
`check`, per call, and prints p50 / mean / p99 per stage in microseconds. The stages do not add up to `check`: it also
merges findings and builds the decision. Compare with bench/engine.py, which times `check` alone. `--cold` empties
aegis_proxy's caches before every call (see bench/common.py), so each stage pays for its own cache misses.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

from common import CORPUS, clear_caches, load, percentile

from aegis_proxy.extract import extract
from aegis_proxy.firewall import Firewall
from aegis_proxy.models import CallContext, ToolCall
from aegis_proxy.provenance import trace
from aegis_proxy.targets import build_targets


def time_stages(
    firewall: Firewall, call: ToolCall, context: CallContext, timings: dict[str, list[float]], cold: bool = False
) -> None:
    """Run every stage once on `call`, appending each stage's seconds to `timings[stage]`."""
    clock = time.perf_counter
    if cold:
        clear_caches()
    started = clock()
    extraction = extract(call.arguments, firewall.limits)
    timings["extract"].append(clock() - started)
    started = clock()
    targets = build_targets(call.tool, extraction.strings)
    timings["targets"].append(clock() - started)
    for scanner in firewall.scanners:
        started = clock()
        list(scanner.scan(call, targets, firewall.settings))
        timings[scanner.name].append(clock() - started)
    started = clock()
    trace(extraction.strings, context).findings()
    timings["provenance"].append(clock() - started)
    if cold:
        clear_caches()
    started = clock()
    firewall.check(call, context)
    timings["check"].append(clock() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--calls", choices=("benign", "attacks", "all"), default="benign")
    parser.add_argument("--cold", action="store_true", help="empty aegis_proxy's caches before every call")
    args = parser.parse_args()
    files = {"benign": ["benign.jsonl"], "attacks": ["attacks.jsonl"], "all": ["benign.jsonl", "attacks.jsonl"]}
    calls = [call for name in files[args.calls] for call in load(args.corpus / name)]
    firewall = Firewall()
    warm: dict[str, list[float]] = defaultdict(list)
    for call, context in calls:  # warm caches (compiled patterns, lru caches) before timing
        time_stages(firewall, call, context, warm)
    timings: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for call, context in calls:
            time_stages(firewall, call, context, timings, args.cold)
    print(f"{args.calls} calls: {len(calls)} x {args.rounds} rounds{' (cold caches)' if args.cold else ''}")
    print(f"{'stage':<12} {'p50 us':>8} {'mean us':>8} {'p99 us':>8}")
    for stage, seconds in timings.items():
        micros = [s * 1e6 for s in seconds]
        print(
            f"{stage:<12} {percentile(micros, 0.5):>8.1f} {statistics.fmean(micros):>8.1f} "
            f"{percentile(micros, 0.99):>8.1f}"
        )


if __name__ == "__main__":
    main()
