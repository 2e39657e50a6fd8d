"""Probe latency: milliseconds per call at batch 1 and batch 32, per backbone, on CPU (and on GPU when one is present).

Usage: python bench/probe.py [--backbone minilm] [--backbone DIR ...] [--threads 2] [--calls 64] [--max-length 256]

"A call" is one rendered tool call in its context (the call-risk head's input: call, user request, newest untrusted
text), taken from the benign corpus. Three numbers per backbone and device:
- forward b1 / b32: the backbone's forward pass and pooling, one text at a time and 32 at once, ms per call;
- scorer: `ProbeScorer.score` end to end with the committed heads (risk + every segment of the call's untrusted
  messages), 32 callers at once on a cold cache, and one caller on a warm cache (the session's messages seen before).
Target (issue 6): <= 15 ms per call on 2 CPU cores with the default backbone; <= 3 ms on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_proxy.check import parse_line
from aegis_proxy.probe import ProbeItem, ProbeScorer, ProbeSettings
from aegis_proxy.probe.backbone import Model, open_model, set_threads
from aegis_proxy.probe.features import pooled
from aegis_proxy.probe.head import HEADS
from aegis_proxy.probe.runtime import PROBES_DIR

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "benign.jsonl"


def items(count: int) -> list[ProbeItem]:
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for line in lines[:: max(1, len(lines) // count)][:count]:
        _, call, context = parse_line(line)
        out.append(ProbeItem.from_call(call, context))
    return out


def forward_ms(backbone: Model, texts: list[str], batch: int) -> float:
    pooled(backbone, texts[:batch], batch)  # warm-up (allocations, kernels)
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        pooled(backbone, texts[start : start + batch], batch)
    return (time.perf_counter() - started) * 1000 / len(texts)


def scorer_ms(spec: str, device: str, sample: list[ProbeItem], threads: int, max_length: int) -> tuple[float, float]:
    settings = ProbeSettings(backbone=spec, device=device, threads=threads, max_length=max_length, timeout_s=600)
    model_name = "minilm" if spec == "minilm" else "smollm2" if spec == "smollm2" else Path(spec).stem
    heads = tuple(h for h in HEADS if (PROBES_DIR / model_name / f"{h}.json").is_file())  # the heads trained so far
    scorer = ProbeScorer.load(settings, heads)
    try:
        batch = sample[:32]
        barrier = threading.Barrier(len(batch))

        def one(item: ProbeItem) -> None:
            barrier.wait()
            scorer.score([item])

        workers = [threading.Thread(target=one, args=(item,)) for item in batch]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        cold = (time.perf_counter() - started) * 1000 / len(batch)
        warm = []
        for item in batch:  # the same calls again: everything is cached
            begin = time.perf_counter()
            scorer.score([item])
            warm.append((time.perf_counter() - begin) * 1000)
        return cold, statistics.median(warm)
    finally:
        scorer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", action="append", help="'minilm' (default) or a local model dir; repeatable")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-scorer", action="store_true", help="skip the end-to-end scorer (no heads needed)")
    args = parser.parse_args()
    import torch

    set_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sample = items(args.calls)
    texts = [item.call_text for item in sample]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{len(texts)} calls from the benign corpus; torch {torch.__version__}, {args.threads} CPU threads, "
        f"{os.cpu_count()} cores, load average {load} (other work on the machine slows every number)"
    )
    print(
        "| backbone | device | tokens/call | forward b1 ms/call | forward b32 ms/call | scorer cold b32 ms/call "
        "| scorer warm ms/call |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for spec in args.backbone or ["minilm"]:
        for device in devices:
            backbone = open_model(spec, max_length=args.max_length, device=device)
            _, mask = backbone.tokenize(texts)
            tokens = float(mask.sum()) / len(texts)
            b1 = forward_ms(backbone, texts, 1)  # the same calls as b32: lengths vary, so must the sample not
            b32 = forward_ms(backbone, texts, 32)
            cold = warm = float("nan")
            if not args.no_scorer:
                cold, warm = scorer_ms(spec, device, sample, args.threads, args.max_length)
            print(f"| {backbone.name} | {device} | {tokens:.0f} | {b1:.1f} | {b32:.1f} | {cold:.1f} | {warm:.2f} |")


if __name__ == "__main__":
    main()
