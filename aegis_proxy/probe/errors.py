"""Errors of the probe: a model, head or data set that cannot be used, or torch missing."""

from __future__ import annotations

from aegis_proxy.errors import AegisError


class ProbeError(AegisError):
    """A backbone, head, data set or setting of the probe is not usable; the message says which file and why."""


class ProbeUnavailable(ProbeError):
    """The probe cannot run here (torch or another `probe` extra package is not installed)."""


INSTALL_HINT = "install the probe extra: pip install -e '.[probe]' (torch==2.13.0 CPU build, safetensors, tokenizers)"
