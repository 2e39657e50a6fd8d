"""`aegis demo` runs the whole product offline and tells the story right; it must stay under 30 seconds."""

from __future__ import annotations

import io
import time

from aegis_proxy.demo.script import run_demo


def test_demo_runs_every_step_and_verifies_the_log() -> None:
    out = io.StringIO()
    started = time.monotonic()
    assert run_demo(out=out) is True
    elapsed = time.monotonic() - started
    text = out.getvalue()
    for expected in ("ALLOWED", "DENIED", "STOPPED", "HELD as approval", "APPROVED", "HIDDEN", "OK:"):
        assert expected in text, expected
    assert "UNEXPECTED" not in text
    assert elapsed < 30
