"""Hot reload: a valid edit swaps the set, an invalid one keeps the last good set, readers never see a mixture."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest

from aegis_proxy.decide import Evidence
from aegis_proxy.firewall import Firewall
from aegis_proxy.models import CallContext, Effect, ToolCall
from aegis_proxy.policy.errors import PolicyError
from aegis_proxy.policy.loader import load_policy
from aegis_proxy.policy.reload import RELOAD, RELOAD_FAILED, PolicyDecider, PolicyEvent, PolicyWatcher

CALL = ToolCall(id="c", tool="t", arguments={})


def evidence() -> Evidence:
    return Evidence(CALL, CallContext(), (), None, {})


def watched(tmp_path: Path, text: str = "default deny\nallow t\n") -> tuple[Path, PolicyWatcher, list[PolicyEvent]]:
    path = tmp_path / "p.aegis"
    path.write_text(text)
    events: list[PolicyEvent] = []
    return path, PolicyWatcher([path], on_event=events.append), events


def test_a_valid_edit_swaps_the_set(tmp_path: Path) -> None:
    path, watcher, events = watched(tmp_path)
    before = watcher.current()
    assert before.decide(evidence()).effect is Effect.ALLOW
    path.write_text("default deny\ndeny t\n")
    event = watcher.poll()
    assert event is not None and event.kind == RELOAD and events == [event]
    assert watcher.current() is not before and event.digest == watcher.digest != before.digest
    assert watcher.current().decide(evidence()).effect is Effect.DENY
    assert watcher.poll() is None  # nothing changed since


def test_an_invalid_edit_keeps_the_last_good_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, watcher, events = watched(tmp_path)
    good = watcher.current()
    path.write_text("default deny\nallow t when args.x = 1\n")
    with caplog.at_level(logging.ERROR, logger="aegis_proxy.policy"):
        event = watcher.poll()
    assert event is not None and event.kind == RELOAD_FAILED
    assert event.digest == good.digest and watcher.current() is good
    assert f"{path}:2:" in event.error and "hint:" in event.error
    assert f"{path}:2:" in caplog.text and good.digest in caplog.text
    assert watcher.poll() is None and len(events) == 1  # the same broken state is reported once
    path.write_text("default deny\nallow t when args.x == 1\n")
    fixed = watcher.poll()
    assert fixed is not None and fixed.kind == RELOAD and watcher.current() is not good


def test_a_deleted_file_keeps_the_last_good_set(tmp_path: Path) -> None:
    path, watcher, _ = watched(tmp_path)
    good = watcher.current()
    path.unlink()
    event = watcher.poll()
    assert event is not None and event.kind == RELOAD_FAILED and "cannot read" in event.error
    assert watcher.current() is good


def test_touching_a_file_without_changing_it_is_not_a_reload(tmp_path: Path) -> None:
    path, watcher, events = watched(tmp_path)
    good = watcher.current()
    path.write_text(path.read_text())
    assert watcher.poll() is None and events == []
    assert watcher.current().digest == good.digest


def test_a_same_size_edit_is_noticed_by_its_hash(tmp_path: Path) -> None:
    path, watcher, _ = watched(tmp_path, "default deny\nallow a\n")
    stat = path.stat()
    path.write_text("default deny\nallow b\n")
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    event = watcher.poll()
    assert event is not None and event.kind == RELOAD


def test_included_files_are_watched_and_a_missing_include_is_retried_when_it_appears(tmp_path: Path) -> None:
    main = tmp_path / "main.aegis"
    main.write_text('default deny\ninclude "lib.aegis"\nallow m\n')
    lib = tmp_path / "lib.aegis"
    lib.write_text("default deny\nallow t\n")
    watcher = PolicyWatcher(main)
    assert watcher.current().decide(evidence()).effect is Effect.ALLOW
    lib.write_text("default deny\ndeny t\n")
    assert watcher.poll() is not None and watcher.current().decide(evidence()).effect is Effect.DENY
    main.write_text('default deny\ninclude "lib.aegis"\ninclude "new.aegis"\nallow m\n')
    failed = watcher.poll()
    assert failed is not None and failed.kind == RELOAD_FAILED and "new.aegis" in failed.error
    (tmp_path / "new.aegis").write_text("default deny\nrule n: allow n\n")
    recovered = watcher.poll()
    assert recovered is not None and recovered.kind == RELOAD
    assert [Path(file.path).name for file in watcher.current().files] == ["main.aegis", "lib.aegis", "new.aegis"]


def test_the_first_load_must_succeed(tmp_path: Path) -> None:
    path = tmp_path / "bad.aegis"
    path.write_text("allow x\n")
    with pytest.raises(PolicyError):
        PolicyWatcher(path)


def test_a_failing_event_callback_does_not_stop_reloads(tmp_path: Path) -> None:
    path = tmp_path / "p.aegis"
    path.write_text("default deny\nallow t\n")

    def broken(event: PolicyEvent) -> None:
        raise RuntimeError("audit sink down")

    watcher = PolicyWatcher(path, on_event=broken)
    path.write_text("default deny\ndeny t\n")
    assert watcher.poll() is not None and watcher.current().decide(evidence()).effect is Effect.DENY


def test_the_decider_follows_the_live_set(tmp_path: Path) -> None:
    path, watcher, _ = watched(tmp_path)
    firewall = Firewall(decider=PolicyDecider(watcher))
    assert firewall.check(CALL).effect is Effect.ALLOW
    path.write_text("default deny\ndeny t\n")
    watcher.poll()
    decision = firewall.check(CALL)
    assert decision.effect is Effect.DENY and decision.policy_digest == watcher.digest


def test_the_thread_reloads_in_the_background(tmp_path: Path) -> None:
    path, watcher, events = watched(tmp_path)
    watcher.interval = 0.01
    with watcher:
        path.write_text("default deny\ndeny t\n")
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            time.sleep(0.01)
    assert events and events[0].kind == RELOAD
    assert watcher._thread is None  # stopped on exit


def test_concurrent_readers_never_see_a_half_state(tmp_path: Path) -> None:
    """Two files change on every edit; every verdict must be the one its own digest's set gives."""
    main = tmp_path / "main.aegis"
    lib = tmp_path / "lib.aegis"
    variants = [
        ('default deny\ninclude "lib.aegis"\nallow t priority 10\n', "default deny\ndeny t priority 20\n"),
        ('default deny\ninclude "lib.aegis"\nallow t priority 30\n', "default deny\ndeny t priority 20\n"),
        ('default deny\ninclude "lib.aegis"\nallow t priority 30\n', "default deny\nask t priority 5\n"),
        ('default deny\ninclude "lib.aegis"\nallow t priority 10\n', "default deny\nask t priority 5\n"),
    ]
    expected: dict[str, Effect] = {}
    for main_text, lib_text in variants:  # every combination a reader could meet, with its digest
        main.write_text(main_text)
        lib.write_text(lib_text)
        policy_set = load_policy(main)
        expected[policy_set.digest] = policy_set.decide(evidence()).effect
    main.write_text(variants[0][0])
    lib.write_text(variants[0][1])
    watcher = PolicyWatcher(main)
    decider = PolicyDecider(watcher)
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            verdict = decider.decide(evidence())
            seen.add(verdict.policy_digest)
            if expected.get(verdict.policy_digest) is not verdict.effect:
                problems.append(f"{verdict.policy_digest[:8]} gave {verdict.effect}")

    readers = [threading.Thread(target=reader) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings, and the writer is not starved
    for thread in readers:
        thread.start()
    try:
        for round_number in range(40):
            main_text, lib_text = variants[round_number % len(variants)]
            main.write_text(main_text)
            lib.write_text(lib_text)
            watcher.poll()
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        sys.setswitchinterval(interval)
    assert problems == []
    assert len(seen) >= 2  # the readers did see reloads happen
