"""Hot reload: watch the policy files, rebuild off the request path, swap atomically, keep the last good set on error.

`PolicyWatcher` polls the files it loaded (roots, includes, and any file a failed load tried to read, so creating a
missing include triggers a retry) by mtime, size and SHA-256. On a change it loads the whole set again in its own
thread; success replaces the live set with one reference assignment, so a request sees either the old set or the new
one, never a mixture. A failed load changes nothing: the error is logged with file:line:col and reported through
`on_event(PolicyEvent("reload_failed", ...))`, once per distinct broken state.

`PolicyDecider` is what the firewall holds: it asks the watcher for the live set on every call, so the firewall never
keeps a stale reference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aegis_proxy.decide import Evidence, Verdict
from aegis_proxy.policy.engine import PolicySet
from aegis_proxy.policy.errors import PolicyError
from aegis_proxy.policy.loader import load_policy

log = logging.getLogger("aegis_proxy.policy")

RELOAD = "reload"
RELOAD_FAILED = "reload_failed"

Fingerprint = tuple[tuple[str, tuple[int, int, str] | None], ...]


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    kind: str  # "reload" | "reload_failed"
    digest: str  # the digest in force after the event: the new set's, or the kept one's on failure
    error: str = ""  # rendered diagnostics (file:line:col, the line, a caret, a hint) when the reload failed
    at: float = field(default_factory=time.time)


def _fingerprint(paths: Sequence[Path]) -> Fingerprint:
    entries = []
    for path in paths:
        try:
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries.append((str(path), (stat.st_mtime_ns, stat.st_size, digest)))
        except OSError:
            entries.append((str(path), None))  # missing or unreadable: its appearance is a change
    return tuple(entries)


class PolicyWatcher:
    """Owns the live PolicySet of a set of root files. The first load happens in the constructor and raises."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        interval: float = 1.0,
        on_event: Callable[[PolicyEvent], None] | None = None,
        loader: Callable[..., PolicySet] = load_policy,
    ) -> None:
        self._paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self._roots = [Path(path).resolve() for path in self._paths]
        self.interval = interval
        self._on_event = on_event
        self._loader = loader
        self._lock = threading.Lock()  # one poll at a time (the thread, or a caller of poll())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        watched: list[Path] = []
        self._current: PolicySet = self._load(watched)  # no good set, no watcher: the caller sees the error
        self._watched = self._watch_list(watched)
        self._seen = _fingerprint(self._watched)
        self._failed: Fingerprint | None = None

    # -- the live set ------------------------------------------------------------------------------------------------

    def current(self) -> PolicySet:
        return self._current

    @property
    def digest(self) -> str:
        return self._current.digest

    # -- polling -----------------------------------------------------------------------------------------------------

    def poll(self) -> PolicyEvent | None:
        """Check the files once; reload if they changed. Returns the event, if any (the callback also gets it)."""
        with self._lock:
            seen = _fingerprint(self._watched)
            if seen == self._seen or seen == self._failed:
                return None
            attempted: list[Path] = []
            try:
                fresh = self._load(attempted)
            except PolicyError as exc:
                error = exc.render()
            except Exception as exc:  # a loader bug must not kill the watcher or unload the policy
                error = f"internal error while loading the policy: {type(exc).__name__}: {exc}"
            else:
                recovered = self._failed is not None
                unchanged = fresh.digest == self._current.digest
                self._current = fresh  # the swap: one reference assignment
                self._watched = self._watch_list(attempted)
                self._seen = _fingerprint(self._watched)
                self._failed = None
                if unchanged and not recovered:
                    return None  # touched, not edited: nothing for the audit log
                log.info("policy reloaded: digest %s", fresh.digest)
                return self._emit(PolicyEvent(RELOAD, fresh.digest))
            self._watched = self._watch_list(attempted, keep=self._watched)  # a failed load may stop early
            self._failed = _fingerprint(self._watched)
            log.error("policy reload failed; keeping digest %s\n%s", self._current.digest, error)
            return self._emit(PolicyEvent(RELOAD_FAILED, self._current.digest, error))

    def _load(self, attempted: list[Path]) -> PolicySet:
        return self._loader(self._paths, attempted=attempted)

    def _watch_list(self, attempted: Sequence[Path], keep: Sequence[Path] = ()) -> list[Path]:
        return list(dict.fromkeys([*self._roots, *attempted, *keep]))

    def _emit(self, event: PolicyEvent) -> PolicyEvent:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the audit sink failing must not stop reloads
                log.exception("policy event callback failed")
        return event

    # -- the thread --------------------------------------------------------------------------------------------------

    def start(self) -> PolicyWatcher:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="aegis-policy-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let the thread die: the last good set stays live either way
                log.exception("policy watcher poll failed")

    def __enter__(self) -> PolicyWatcher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PolicyDecider:
    """A Decider that always uses the watcher's live set (the firewall holds this, never a PolicySet)."""

    def __init__(self, source: PolicyWatcher | Callable[[], PolicySet]) -> None:
        self._current = source.current if isinstance(source, PolicyWatcher) else source

    def decide(self, evidence: Evidence) -> Verdict:
        return self._current().decide(evidence)
