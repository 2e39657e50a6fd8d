"""`aegis probe build-dataset | train | eval | check-precision | score`: argument parsing and printing; the work is in
the probe modules.

This module imports no torch: `aegis --help` must work without the probe extra. Each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from aegis_proxy.errors import AegisError
from aegis_proxy.probe.errors import ProbeError
from aegis_proxy.probe.precision import COMPUTE_PRECISIONS, PRECISIONS

DEFAULT_DATA = Path("probes") / ".cache" / "dataset"
DEFAULT_CACHE = Path("probes") / ".cache" / "features"
DEFAULT_README = Path("probes") / "README.md"
EXIT_OK, EXIT_SOME_ERRORS = 0, 1

Command = tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _heads_dir(args: argparse.Namespace, backbone_name: str) -> Path:
    return Path(args.heads) if args.heads else Path("probes") / backbone_name


def _args_backbone(p: argparse.ArgumentParser, precision: str | None = "fp32") -> None:
    p.add_argument("--backbone", default="minilm", metavar="SPEC", help="'minilm' (default) or a local HF model dir")
    p.add_argument("--max-length", type=int, default=256, metavar="N", help="tokens read per text (default 256)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="torch CPU threads (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--heads", metavar="DIR", help="head directory (default probes/<backbone name>)")
    if precision is not None:
        p.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=precision,
            help=f"precision of the backbone's linear layers (default {precision})",
        )


def _args_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA), metavar="DIR", help=f"data set (default {DEFAULT_DATA})")
    p.add_argument(
        "--cache", default=str(DEFAULT_CACHE), metavar="DIR", help=f"feature cache (default {DEFAULT_CACHE})"
    )
    p.add_argument(
        "--head", action="append", choices=("risk", "injection"), help="only this head (repeatable; default both)"
    )


def _args_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(DEFAULT_DATA), metavar="DIR", help=f"output folder (default {DEFAULT_DATA})")
    p.add_argument("--corpus", metavar="DIR", help="engine corpora folder (default tests/corpus of this checkout)")
    p.add_argument("--seed", type=int, default=13, metavar="N", help="sampling seed (default 13)")
    p.add_argument("--variants", type=int, default=8, metavar="N", help="injection variants per task (default 8)")


def _args_train(p: argparse.ArgumentParser) -> None:
    _args_backbone(p)
    _args_data(p)


def _args_eval(p: argparse.ArgumentParser) -> None:
    _args_backbone(p)
    _args_data(p)
    p.add_argument("--readme", default=str(DEFAULT_README), metavar="PATH", help="results table to rewrite")
    p.add_argument("--no-readme", action="store_true", help="print the table only")


def _args_check_precision(p: argparse.ArgumentParser) -> None:
    _args_backbone(p, precision=None)
    _args_data(p)
    p.add_argument(
        "--precision",
        action="append",
        choices=COMPUTE_PRECISIONS,
        help="precision to check (repeatable; default fp32, bf16 and int8; the heads' training precision is the "
        "reference and is always included)",
    )
    p.add_argument("--readme", default=str(DEFAULT_README), metavar="PATH", help="precision table to rewrite")
    p.add_argument("--dry-run", action="store_true", help="print the table; change neither the cards nor the README")


def _args_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="JSONL of tool calls (the `aegis check` input), or - for stdin")
    _args_backbone(p, precision="auto")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per line before 'unknown'")


def _cmd_build(args: argparse.Namespace) -> int:
    from aegis_proxy.probe import dataset

    corpus = Path(args.corpus) if args.corpus else dataset.CORPUS_DIR
    manifest = dataset.build(Path(args.out), corpus_dir=corpus, seed=args.seed, variants=args.variants)
    for head, entry in manifest["files"].items():
        counts = ", ".join(f"{k} {v}" for k, v in entry["counts"].items())
        print(f"{head}: {entry['items']} items ({counts}); {entry['dropped_mixed_split']} dropped (mixed split)")
    print(f"wrote {args.out}/manifest.json (suites: {', '.join(manifest['suites'])})")
    return EXIT_OK


def _backbone(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from aegis_proxy.probe.pipeline import open_backbone

    return open_backbone(args.backbone, args.max_length, args.threads, args.device, args.precision)


def _cmd_train(args: argparse.Namespace) -> int:
    from aegis_proxy.probe.pipeline import train

    backbone = _backbone(args)
    heads = tuple(args.head) if args.head else ("risk", "injection")
    out = _heads_dir(args, backbone.name)
    train(Path(args.data), out, backbone=backbone, heads=heads, cache_dir=Path(args.cache), log=print)
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from aegis_proxy.probe.pipeline import evaluate, results_table, write_readme

    data = Path(args.data)
    if not (data / "manifest.json").exists():  # the build is deterministic: the same corpus gives the same data set
        from aegis_proxy.probe import dataset

        print(f"no data set in {data}: building it (aegis probe build-dataset --out {data})")
        dataset.build(data)
    backbone = _backbone(args)
    heads = tuple(args.head) if args.head else ("risk", "injection")
    out = _heads_dir(args, backbone.name)
    report = evaluate(Path(args.data), out, backbone=backbone, heads=heads, cache_dir=Path(args.cache), log=print)
    print(results_table(report))
    if not args.no_readme:
        write_readme(Path(args.readme), report)
        print(f"rewrote the results in {args.readme}; metrics in {out}/metrics.json")
    return EXIT_OK


def _cmd_check_precision(args: argparse.Namespace) -> int:
    from aegis_proxy.probe.pipeline import open_backbone
    from aegis_proxy.probe.precision_check import check_precisions, precision_table, write_readme

    data = Path(args.data)
    if not (data / "manifest.json").exists():
        from aegis_proxy.probe import dataset

        print(f"no data set in {data}: building it (aegis probe build-dataset --out {data})")
        dataset.build(data)
    precisions = list(dict.fromkeys(["fp32", *(args.precision or ["bf16", "int8"])]))
    backbones = {p: open_backbone(args.backbone, args.max_length, args.threads, args.device, p) for p in precisions}
    name = next(iter(backbones.values())).name
    heads = tuple(args.head) if args.head else ("risk", "injection")
    out = _heads_dir(args, name)
    report = check_precisions(
        data, out, backbones=backbones, heads=heads, cache_dir=Path(args.cache), write_cards=not args.dry_run, log=print
    )
    print(precision_table(report))
    if not args.dry_run:
        write_readme(Path(args.readme), report)
        print(f"rewrote the precision table in {args.readme}; accepted precisions are on the cards in {out}")
    return EXIT_OK


def _cmd_score(args: argparse.Namespace) -> int:
    from aegis_proxy.check import parse_line
    from aegis_proxy.probe.runtime import ProbeItem, ProbeScorer, ProbeSettings

    settings = ProbeSettings(
        backbone=args.backbone,
        heads_dir=Path(args.heads) if args.heads else None,
        max_length=args.max_length,
        threads=args.threads,
        device=args.device,
        timeout_s=args.timeout,
        precision=args.precision,
    )
    scorer = ProbeScorer.load(settings)
    # stderr: stdout is one JSON line per call. Which precision runs is part of what the scores mean.
    print(f"aegis probe: backbone {args.backbone}, precision {scorer.precision}", file=sys.stderr)
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ProbeError(f"cannot read {args.file}: {exc.strerror}", hint="give a JSONL file or - for stdin") from None
    errors = 0
    try:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                _, call, context = parse_line(line)  # exactly what `aegis check` accepts
            except AegisError as exc:
                errors += 1
                print(json.dumps({"line": number, "error": exc.message}))
                continue
            item = ProbeItem.from_call(call, context)
            [scores] = scorer.score([item])
            spans = [
                {"message": m, "start": s, "end": e, "injection": v}
                for m, text in enumerate(item.untrusted)
                for s, e, v in scorer.injection_spans(text)
                if v is not None and v >= scorer.heads["injection"].threshold
            ]
            print(json.dumps({"id": call.id, "scores": scores, "injected_segments": spans}))
    finally:
        if stream is not sys.stdin:
            stream.close()
        scorer.close()
    return EXIT_SOME_ERRORS if errors else EXIT_OK


PROBE_COMMANDS: tuple[Command, ...] = (
    (
        "build-dataset",
        "Build the probe's labelled calls and messages (AgentDojo workspace/travel, engine corpora), split by task.",
        "  aegis probe build-dataset --out probes/.cache/dataset",
        _args_build,
        _cmd_build,
    ),
    (
        "train",
        "Train the call-risk and injection heads on a frozen backbone; write safetensors + JSON cards.",
        "  aegis probe train --backbone minilm --data probes/.cache/dataset",
        _args_train,
        _cmd_train,
    ),
    (
        "eval",
        "Measure the heads on held-out tasks beside the tool-name and scanner baselines; rewrite probes/README.md.",
        "  aegis probe eval --backbone minilm --data probes/.cache/dataset",
        _args_eval,
        _cmd_eval,
    ),
    (
        "check-precision",
        "Measure what bf16/int8 backbone precision does to the heads (validation decides); record it on the cards.",
        "  aegis probe check-precision --backbone minilm --precision bf16",
        _args_check_precision,
        _cmd_check_precision,
    ),
    (
        "score",
        "Score tool calls (JSON lines, the `aegis check` input) with the trained heads; print scores and spans.",
        "  aegis probe score examples/calls.jsonl",
        _args_score,
        _cmd_score,
    ),
)
