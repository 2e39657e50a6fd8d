"""The scanners a firewall runs by default, in a fixed order (findings are merged, so order only affects timing)."""

from __future__ import annotations

from aegis_proxy.scanners.base import Scanner
from aegis_proxy.scanners.code import CodeScanner
from aegis_proxy.scanners.injection import InjectionScanner
from aegis_proxy.scanners.network import NetworkScanner
from aegis_proxy.scanners.paths import PathScanner
from aegis_proxy.scanners.secrets import SecretScanner
from aegis_proxy.scanners.shell import ShellScanner
from aegis_proxy.scanners.sql import SqlScanner

SCANNER_CLASSES: tuple[type[Scanner], ...] = (
    ShellScanner,
    PathScanner,
    NetworkScanner,
    SecretScanner,
    SqlScanner,
    CodeScanner,
    InjectionScanner,
)


def default_scanners() -> list[Scanner]:
    return [cls() for cls in SCANNER_CLASSES]


def known_categories() -> frozenset[str]:
    """Every finding category a default firewall can emit (the policy language checks names against it)."""
    extra = {"extract.bound", "provenance.injected", "provenance.untrusted"}
    return frozenset().union(*(cls.categories for cls in SCANNER_CLASSES), extra)
