"""Deep argument extraction. (Contract only; the walker is being written.)"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import JsonValue

from aegis_proxy.models import Finding


@dataclass(frozen=True, slots=True)
class ExtractedString:
    path: str  # "args", "args.cmd", "args.files[2].name", 'args["odd key"]'
    text: str  # after decoding and normalisation
    chain: tuple[str, ...] = ()  # e.g. ("base64", "json"); ("key",) for an object key
    is_key: bool = False


@dataclass(frozen=True, slots=True)
class ExtractionLimits:
    max_depth: int = 64  # JSON nesting (including JSON decoded from strings)
    max_strings: int = 10_000
    max_decode_depth: int = 6  # decodings stacked on one string
    max_decoded_bytes: int = 4 << 20  # total bytes produced by decoding, per call
    max_scan_bytes: int = 8 << 20  # total text handed to the scanners, per call


@dataclass(frozen=True, slots=True)
class Extraction:
    strings: tuple[ExtractedString, ...]
    findings: tuple[Finding, ...] = ()  # "extract.bound" when a limit was hit: never a silent skip


def extract(arguments: JsonValue, limits: ExtractionLimits | None = None) -> Extraction:
    raise NotImplementedError
