"""Per-call latency of the pure pipeline (`Firewall.check`) over the test corpus.

Usage: python bench/engine.py [--rounds 5] [--corpus tests/corpus] [--fresh]
Prints p50 / p99 / mean per call in milliseconds, overall and split into benign and attack calls. Targets (issue 2):
p50 <= 0.2 ms, p99 <= 1 ms on a 2-core machine. Replaying the corpus hits every text-keyed cache after the warm-up
round; `--fresh` tags every string value anew in each round (see bench/common.py) to time the uncached path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import CORPUS, freshen, load, percentile, round_tag

from aegis_proxy.firewall import Firewall


def measure(firewall: Firewall, calls: list, rounds: int, fresh: bool = False) -> list[float]:
    for call, context in calls:  # warm caches (compiled patterns, lru caches) before timing
        firewall.check(call, context)
    timings = []
    for round_ in range(rounds):
        for call, context in freshen(calls, round_tag(round_)) if fresh else calls:
            started = time.perf_counter()
            firewall.check(call, context)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--fresh", action="store_true", help="a new tag on every string value in each round")
    args = parser.parse_args()
    firewall = Firewall()
    benign = load(args.corpus / "benign.jsonl")
    attacks = load(args.corpus / "attacks.jsonl")
    rows = {
        "benign": measure(firewall, benign, args.rounds, args.fresh),
        "attacks": measure(firewall, attacks, args.rounds, args.fresh),
    }
    rows["all"] = rows["benign"] + rows["attacks"]
    print(f"{'calls':<8} {'n':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8}")
    for name, values in rows.items():
        print(
            f"{name:<8} {len(values):>7} {percentile(values, 0.5):>8.3f} {percentile(values, 0.99):>8.3f} "
            f"{statistics.fmean(values):>8.3f} {max(values):>8.3f}"
        )


if __name__ == "__main__":
    main()
