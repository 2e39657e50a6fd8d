"""Per-stage latency of the pure pipeline over the test corpus: where a call's time goes.

Usage: python bench/stages.py [--rounds 3] [--corpus tests/corpus] [--calls benign|attacks|all] [--fresh] [--cold]
Runs each stage of `Firewall.check` on its own (extract, targets, every default scanner, provenance, the policy:
`--policy`, by default the shipped default policy, as `aegis run` uses) and then the whole `check`, per call, and
prints p50 / mean / p99 per stage in microseconds. The stages do not add up to `check`: it also
merges findings and builds the decision. Compare with bench/engine.py, which times `check` alone. `--fresh` tags every
string value anew in each round (see bench/common.py), so text-keyed caches miss as they would on new traffic.
`--cold` evicts the CPU's caches before every stage (common.evict_caches): in the proxy a call is checked after
mitmproxy, the client and the upstream have run on the same cores, and the same code then takes several times as long
as in a loop that keeps it in cache (docs/proxy.md, Latency); this is the regime to optimise for.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from common import CORPUS, evict_caches, freshen, load, percentile, round_tag

from aegis_proxy.config import default_policy
from aegis_proxy.decide import Evidence
from aegis_proxy.extract import extract
from aegis_proxy.firewall import Firewall, merge_findings
from aegis_proxy.models import CallContext, Finding, ToolCall
from aegis_proxy.policy.loader import load_policy
from aegis_proxy.provenance import trace
from aegis_proxy.targets import build_targets


def time_stages(
    firewall: Firewall,
    call: ToolCall,
    context: CallContext,
    timings: dict[str, list[float]],
    whole: ToolCall,
    before: Callable[[], object] = lambda: None,
) -> None:
    """Run every stage once on `call`, then `check` on `whole` (the same call, or a fresh copy of it), appending
    each stage's seconds to `timings[stage]`; `before` runs before each stage, untimed (--cold: evict the caches)."""
    clock = time.perf_counter
    before()
    started = clock()
    extraction = extract(call.arguments, firewall.limits)
    timings["extract"].append(clock() - started)
    before()
    started = clock()
    targets = build_targets(call.tool, extraction.strings)
    timings["targets"].append(clock() - started)
    scanned: list[Finding] = []
    for scanner in firewall.scanners:
        before()
        started = clock()
        scanned.extend(scanner.scan(call, targets, firewall.settings))
        timings[scanner.name].append(clock() - started)
    before()
    started = clock()
    provenance = trace(extraction.strings, context)
    traced = provenance.findings()
    timings["provenance"].append(clock() - started)
    findings = merge_findings([*extraction.findings, *scanned, *traced])  # the policy's evidence, as check builds it
    before()
    started = clock()
    firewall.decider.decide(Evidence(call=call, context=context, findings=findings, provenance=provenance, scores={}))
    timings["policy"].append(clock() - started)
    before()
    started = clock()
    firewall.check(whole, context)
    timings["check"].append(clock() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--calls", choices=("benign", "attacks", "all"), default="benign")
    parser.add_argument("--fresh", action="store_true", help="a new tag on every string value in each round")
    parser.add_argument("--policy", type=Path, default=default_policy(), help="the policy (stage 'policy')")
    parser.add_argument("--cold", action="store_true", help="evict the CPU caches before every stage")
    args = parser.parse_args()
    before = evict_caches if args.cold else lambda: None
    files = {"benign": ["benign.jsonl"], "attacks": ["attacks.jsonl"], "all": ["benign.jsonl", "attacks.jsonl"]}
    calls = [call for name in files[args.calls] for call in load(args.corpus / name)]
    firewall = Firewall(decider=load_policy([str(args.policy)]))
    warm: dict[str, list[float]] = defaultdict(list)
    for call, context in calls:  # warm caches (compiled patterns, lru caches) before timing
        time_stages(firewall, call, context, warm, call)
    timings: dict[str, list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        # With --fresh, `check` gets its own tag: it must not find the texts the stages just cached.
        staged = freshen(calls, round_tag(round_, "zs")) if args.fresh else calls
        whole = freshen(calls, round_tag(round_, "zc")) if args.fresh else calls
        for (call, context), (check_call, _) in zip(staged, whole, strict=True):
            time_stages(firewall, call, context, timings, check_call, before)
    regime = "".join((" (fresh values)" if args.fresh else "", " (cold caches)" if args.cold else ""))
    print(f"{args.calls} calls: {len(calls)} x {args.rounds} rounds{regime}")
    print(f"{'stage':<12} {'p50 us':>8} {'mean us':>8} {'p99 us':>8}")
    for stage, seconds in timings.items():
        micros = [s * 1e6 for s in seconds]
        print(
            f"{stage:<12} {percentile(micros, 0.5):>8.1f} {statistics.fmean(micros):>8.1f} "
            f"{percentile(micros, 0.99):>8.1f}"
        )


if __name__ == "__main__":
    main()
