"""The hidden-state probe: a frozen transformer reads a tool call in its context; light heads on its hidden states score
call risk and injected instructions in untrusted text.

Optional: torch, safetensors, tokenizers and numpy come with the `probe` extra, and are imported only when a probe is
loaded. Importing this package never imports torch, and the core never imports this package at import time. When the
probe cannot run, `ProbeScorer.open` returns a scorer whose every score is None ("unknown"): the policy decides.
"""

from aegis_proxy.probe.runtime import SCORE_KEYS, ProbeItem, ProbeScorer, ProbeSettings

__all__ = ["SCORE_KEYS", "ProbeItem", "ProbeScorer", "ProbeSettings"]
