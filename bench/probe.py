"""Probe latency: milliseconds per call at batch 1 and batch 32, per backbone, on CPU (and on GPU when one is present).

Usage: python bench/probe.py [--backbone minilm] [--backbone DIR ...] [--sample corpus|agentdojo ...] [--threads 2]
                             [--precision auto|fp32|bf16|int8 ...] [--calls 64] [--repeat 3] [--max-length 256]
                             [--think-ms 300] [--no-scorer]

"A call" is one tool call in its context: the call-risk head's input (the rendered call, the user request, the newest
untrusted text) and, for the scorer, every segment of its untrusted messages. Two samples:
- `corpus` (default): calls of the engine's benign corpus (short contexts);
- `agentdojo`: the held-out calls of the probe's data set (AgentDojo workspace/travel: long tool outputs, so the
  rendered call fills the backbone's max length). Built in a temporary directory; nothing is written to the checkout.
Numbers per backbone, sample and device:
- forward b1 (all layers): the whole backbone and pooling, one text at a time;
- forward b1 / b32 (heads' layers): the same, run only up to the deepest layer a committed head reads (what the
  scorer runs), one text at a time and 32 at once (batched by length);
- scorer b1 cold: `ProbeScorer.score` end to end with the committed heads, one caller at a time with no cache (the
  call text and every segment of its untrusted messages are encoded for every call);
- scorer b1, newest message new: one caller at a time, the earlier untrusted messages scored before and the newest
  one new (each step of an agent brings one new tool result); median ms per call;
- scorer b1, newest message new, prefetched: the same call, but its newest message was handed to
  `ProbeScorer.prefetch` when the LLM request carrying it passed (as the proxy does), `--think-ms` (default 300 ms, a
  short LLM turn) before the call came back: the cache is cleared, the newest message prefetched, the bench sleeps
  the think time, then times `score`. What is left is the call's own forward pass, as long as the think time covers
  the prefetch's encoding; a shorter think time (try `--think-ms 0`) shows the call waiting for it. Median ms per call;
- scorer b1, seen messages: one caller at a time, each call new but its untrusted messages scored before (the usual
  case inside a session: the same tool results come with every call); median ms per call;
- scorer 32 callers cold: 32 concurrent callers on a cold cache, ms per call;
- scorer warm: one caller, everything cached (the same call again).
The forward and scorer b1 columns are the best of `--repeat` passes over the sample: on a shared machine other jobs
only ever add time, so the fastest pass is the closest to the cost of the work itself. `--precision` (repeatable;
default auto) runs every row at each precision; the precision column is what actually ran (`auto` resolves to the
fastest precision this machine runs well that the committed heads validate; with --no-scorer, to the fastest
this machine runs well).
Target (issue 6): <= 15 ms per call at batch 1 on 2 CPU cores with the default backbone; <= 3 ms on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_proxy.check import parse_line
from aegis_proxy.models import CallContext, Message, ToolCall
from aegis_proxy.probe import ProbeItem, ProbeScorer, ProbeSettings
from aegis_proxy.probe.backbone import Model, open_model, set_threads
from aegis_proxy.probe.features import pooled
from aegis_proxy.probe.head import HEADS
from aegis_proxy.probe.precision import PRECISIONS
from aegis_proxy.probe.render import segments
from aegis_proxy.probe.runtime import PROBES_DIR

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "benign.jsonl"
SAMPLES = ("corpus", "agentdojo")


def _spread(rows: list[ProbeItem], count: int) -> list[ProbeItem]:
    return rows[:: max(1, len(rows) // count)][:count]


def corpus_items(count: int) -> list[ProbeItem]:
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for line in lines:
        _, call, context = parse_line(line)
        out.append(ProbeItem.from_call(call, context))
    return _spread(out, count)


def agentdojo_items(count: int) -> list[ProbeItem]:
    from aegis_proxy.probe import dataset

    with tempfile.TemporaryDirectory() as scratch:
        dataset.build(Path(scratch))
        items = dataset.load_items(Path(scratch), "risk")
    out = []
    for item in items:
        if item["split"] != "test" or not item["source"].startswith("agentdojo/"):
            continue
        call = ToolCall(id="bench", tool=item["tool"], arguments=item["arguments"])
        context = CallContext(messages=tuple(Message.model_validate(m) for m in item["messages"]))
        out.append(ProbeItem.from_call(call, context))
    return _spread(out, count)


def forward_ms(backbone: Model, texts: list[str], batch: int, upto: int | None, repeat: int) -> float:
    pooled(backbone, texts[:batch], batch, upto)  # warm-up (allocations, kernels)
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        for start in range(0, len(texts), batch):
            pooled(backbone, texts[start : start + batch], batch, upto)
        passes.append((time.perf_counter() - started) * 1000 / len(texts))
    return min(passes)


def open_scorer(
    spec: str, device: str, threads: int, max_length: int, precision: str, cache_entries: int = 65_536
) -> ProbeScorer:
    settings = ProbeSettings(
        backbone=spec,
        device=device,
        threads=threads,
        max_length=max_length,
        timeout_s=600,
        cache_entries=cache_entries,
        precision=precision,
    )
    model_name = "minilm" if spec == "minilm" else "smollm2" if spec == "smollm2" else Path(spec).stem
    heads = tuple(h for h in HEADS if (PROBES_DIR / model_name / f"{h}.json").is_file())  # the heads trained so far
    return ProbeScorer.load(settings, heads)


def alone_ms(uncached: ProbeScorer, sample: list[ProbeItem], repeat: int) -> float:
    """One caller at a time, every text encoded (the scorer keeps no cache), ms per call: best of `repeat` passes."""
    uncached.score([sample[0]])  # warm-up (allocations, kernels)
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        for item in sample:
            uncached.score([item])
        passes.append((time.perf_counter() - started) * 1000 / len(sample))
    return min(passes)


def seen_messages_ms(scorer: ProbeScorer, sample: list[ProbeItem]) -> float:
    """One caller at a time, a new call whose untrusted messages were scored before: median ms per call."""
    for item in sample:
        for text in item.untrusted:
            scorer.injection_spans(text)  # what an earlier call of the session would have scored
    times = []
    for item in sample:
        begin = time.perf_counter()
        scorer.score([item])
        times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def newest_new_ms(uncached: ProbeScorer, sample: list[ProbeItem]) -> float:
    """One caller at a time, a new call whose earlier untrusted messages were scored before and whose newest one is
    new (each agent step brings one tool result): the call text and the newest message's segments are encoded, the
    older messages are cache hits, which cost next to nothing. Timed on the uncached scorer with only the newest
    message given, so no other call of the sample can have scored it first. Median ms per call."""
    times = []
    for item in sample:
        newest_only = dataclasses.replace(item, untrusted=item.untrusted[:1])  # newest first
        begin = time.perf_counter()
        uncached.score([newest_only])
        times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def prefetched_ms(scorer: ProbeScorer, sample: list[ProbeItem], think_ms: float) -> float:
    """`newest_new_ms`, but the newest message was prefetched `think_ms` before the call: median ms per call. The cache
    is cleared before each call, so the newest message is new however often the sample repeats it."""
    times = []
    for item in sample:
        newest_only = dataclasses.replace(item, untrusted=item.untrusted[:1])
        scorer.clear_cache()
        scorer.prefetch_texts(newest_only.untrusted)  # the LLM request passes: returns at once
        time.sleep(think_ms / 1000)  # the LLM thinks
        begin = time.perf_counter()
        scorer.score([newest_only])  # its answer carries the call
        times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def concurrent_ms(scorer: ProbeScorer, sample: list[ProbeItem]) -> tuple[float, float]:
    """(32 concurrent callers on a cold cache; then one caller on the warm cache), ms per call."""
    together = sample
    barrier = threading.Barrier(len(together))

    def one(item: ProbeItem) -> None:
        barrier.wait()
        scorer.score([item])

    workers = [threading.Thread(target=one, args=(item,)) for item in together]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cold = (time.perf_counter() - started) * 1000 / len(together)
    warm = []
    for item in together:  # the same calls again: everything is cached
        begin = time.perf_counter()
        scorer.score([item])
        warm.append((time.perf_counter() - begin) * 1000)
    return cold, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", action="append", help="'minilm' (default) or a local model dir; repeatable")
    parser.add_argument("--sample", action="append", choices=SAMPLES, help="calls to time (default corpus); repeatable")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="passes per b1/b32 number; the best is reported")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--think-ms", type=float, default=300.0, help="LLM think time between prefetch and call (default 300)"
    )
    parser.add_argument("--no-scorer", action="store_true", help="skip the end-to-end scorer (no heads needed)")
    parser.add_argument("--precision", action="append", choices=PRECISIONS, help="repeatable (default auto)")
    args = parser.parse_args()
    import torch

    set_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    loaders = {"corpus": corpus_items, "agentdojo": agentdojo_items}
    samples = {name: loaders[name](args.calls) for name in dict.fromkeys(args.sample or ["corpus"])}
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{args.calls} calls per sample; torch {torch.__version__}, {args.threads} CPU threads, "
        f"{os.cpu_count()} cores, load average {load} (other work on the machine slows every number); "
        f"prefetched: {args.think_ms:g} ms think time between prefetch and call"
    )
    print(
        "| backbone | sample | device | precision | tokens/call | segments/call | layers run | "
        "forward b1 (all layers) | forward b1 | forward b32 | scorer b1 cold | scorer b1, newest message new | "
        "scorer b1, newest message new, prefetched | scorer b1, seen messages | scorer 32 callers cold | scorer warm |"
    )
    print("| --- | --- | --- | --- |" + " ---: |" * 12)
    runs = [
        (spec, device, precision)
        for spec in args.backbone or ["minilm"]
        for device in devices
        for precision in dict.fromkeys(args.precision or ["auto"])
    ]
    for spec, device, precision in runs:
        scorer = uncached = None
        if not args.no_scorer:
            scorer = open_scorer(spec, device, args.threads, args.max_length, precision)
            uncached = open_scorer(spec, device, args.threads, args.max_length, precision, cache_entries=0)
        # The forward rows run what the scorer runs (auto resolved against the heads' cards).
        ran = precision if scorer is None else scorer.precision or precision
        backbone = open_model(spec, max_length=args.max_length, device=device, precision=ran)
        try:
            upto = None if scorer is None else max(h.max_layer for h in scorer.heads.values())
            risk_input = scorer.heads["risk"].input if scorer is not None and "risk" in scorer.heads else ""
            for name, sample in samples.items():
                texts = [item.risk_text(risk_input) for item in sample]  # what the call-risk head reads
                _, mask = backbone.tokenize(texts)
                tokens = float(mask.sum()) / len(texts)
                pieces = sum(len(segments(text)) for item in sample for text in item.untrusted) / len(sample)
                full = forward_ms(backbone, texts, 1, None, args.repeat)  # the same calls at every batch size
                b1 = forward_ms(backbone, texts, 1, upto, args.repeat)
                b32 = forward_ms(backbone, texts, 32, upto, args.repeat)
                alone = newest = prefetched = seen = cold = warm = float("nan")
                if scorer is not None and uncached is not None:
                    alone = alone_ms(uncached, sample, args.repeat)
                    newest = newest_new_ms(uncached, sample)
                    cold, warm = concurrent_ms(scorer, sample[:32])
                    seen = seen_messages_ms(scorer, sample[32:])  # calls the concurrent run did not see
                    prefetched = prefetched_ms(scorer, sample, args.think_ms)  # last: it clears the cache
                layers = backbone.num_layers if upto is None else upto
                print(
                    f"| {backbone.name} | {name} | {device} | {backbone.precision} | {tokens:.0f} | {pieces:.1f} | "
                    f"{layers}/{backbone.num_layers} | {full:.1f} | {b1:.1f} | {b32:.1f} | {alone:.1f} | "
                    f"{newest:.1f} | {prefetched:.1f} | {seen:.1f} | {cold:.1f} | {warm:.2f} |"
                )
        finally:
            for opened in (scorer, uncached):
                if opened is not None:
                    opened.close()


if __name__ == "__main__":
    main()
