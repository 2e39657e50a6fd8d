"""Adapters around the pure core: mitmproxy addons (addon.py), one wire-protocol module per protocol, the runner.

Only this package imports mitmproxy, and only addon.py and runner.py do; the wire modules are pure byte-level code.
"""
