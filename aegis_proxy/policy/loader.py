"""Load a policy: read the files, follow includes, check, compile, and compute the digest (spec, semantics 1, 2, 8).

Any error stops the load and nothing of the new set is used: a file that cannot be read, parsed or checked, an include
cycle, a missing `default`. There is no partial set and no allow-all fallback; hot reload keeps the last good set.

Files are named in diagnostics as the user gave them (`policies/default.aegis`), includes relative to the including
file. Each file is loaded once (by its resolved path), in load order: the root files as given, each followed by what it
includes, depth first. The digest covers exactly the bytes that were parsed, in that order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aegis_proxy.policy import ast
from aegis_proxy.policy.compiler import PolicyCompileError
from aegis_proxy.policy.engine import PolicySet, build_policy_set
from aegis_proxy.policy.errors import Diagnostic, PolicyCheckError, PolicyError

DIGEST_PREFIX = b"aegis-policy-v1\x00"
MAX_INCLUDE_DEPTH = 32
MAX_POLICY_BYTES = 4 << 20  # a policy is a page of rules; anything this large is a mistake (or an attack on reload)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One loaded file: where it is, what was parsed, and its name in the digest."""

    path: str  # as shown in diagnostics: as given, or the includer's directory joined with the include
    resolved: Path  # identity: each resolved path is loaded once
    digest_name: str  # path relative to the first root file's directory, with forward slashes
    data: bytes
    policy: ast.PolicyFile


@dataclass(frozen=True, slots=True)
class LoadedSources:
    files: tuple[SourceFile, ...]  # load order
    includes: Mapping[str, tuple[str, ...]]  # file path -> paths of the files it includes

    @property
    def policies(self) -> tuple[ast.PolicyFile, ...]:
        return tuple(file.policy for file in self.files)

    @property
    def digest(self) -> str:
        return policy_digest((file.digest_name, file.data) for file in self.files)


def policy_digest(files: Iterable[tuple[str, bytes]]) -> str:
    """SHA-256 hex over `aegis-policy-v1\\0` then, per file in load order, `name \\0 bytes \\0`."""
    digest = hashlib.sha256(DIGEST_PREFIX)
    for name, data in files:
        digest.update(name.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(data)
        digest.update(b"\x00")
    return digest.hexdigest()


def _parse(source: str, path: str) -> ast.PolicyFile:
    from aegis_proxy.policy.parser import parse_policy  # the front-end; imported late so this module loads alone

    return parse_policy(source, path)


def _decode(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        span = ast.Span(path, line, column)
        raise PolicyCheckError(
            [Diagnostic("error", span, "the file is not UTF-8 text", "save the policy as UTF-8")]
        ) from None
    return text.removeprefix("\ufeff")


def read_sources(
    paths: Sequence[str | os.PathLike[str]],
    *,
    parse: Callable[[str, str], ast.PolicyFile] = _parse,
    attempted: list[Path] | None = None,
) -> LoadedSources:
    """Read and parse the root files and everything they include. Raises PolicyError (syntax, cycle, unreadable).

    `attempted` collects every resolved path the load tried to read, also when it fails (the reload watcher watches
    them: creating a missing include must trigger a retry).
    """
    if not paths:
        raise PolicyError("no policy file given", [], hint="pass at least one .aegis file")
    roots = [os.fspath(path) for path in paths]
    base = Path(roots[0]).resolve().parent
    loaded: dict[Path, SourceFile] = {}
    order: list[SourceFile] = []
    includes: dict[str, tuple[str, ...]] = {}

    def read(shown: str, via: tuple[tuple[Path, str], ...], at: tuple[ast.Include, str] | None) -> SourceFile:
        resolved = Path(shown).resolve()
        if attempted is not None:
            attempted.append(resolved)
        data = _read_bytes(resolved, shown, at)
        text = _decode(data, shown)
        policy = parse(text, shown)
        name = Path(os.path.relpath(resolved, base)).as_posix()
        source = SourceFile(shown, resolved, name, data, policy)
        loaded[resolved] = source
        order.append(source)
        children = []
        stack = (*via, (resolved, shown))
        for include in policy.includes:
            child = os.path.normpath(os.path.join(os.path.dirname(shown), include.path))
            child_resolved = Path(child).resolve()
            cycle = [item_shown for item_path, item_shown in stack if item_path == child_resolved]
            if cycle:
                start = next(i for i, (item_path, _) in enumerate(stack) if item_path == child_resolved)
                chain = " -> ".join([*(item_shown for _, item_shown in stack[start:]), child])
                raise PolicyCheckError(
                    [
                        Diagnostic.at(
                            "error",
                            include.span,
                            f"include cycle: {chain}",
                            source=text,
                            hint="a file may not include itself, directly or through other files",
                        )
                    ]
                )
            if len(stack) >= MAX_INCLUDE_DEPTH:
                raise PolicyCheckError(
                    [Diagnostic.at("error", include.span, "includes nest too deeply", source=text, hint="flatten them")]
                )
            if child_resolved not in loaded:
                read(child, stack, (include, text))
            children.append(loaded[child_resolved].path)  # the name it was first loaded under
        includes[shown] = tuple(children)
        return source

    for root in roots:
        if Path(root).resolve() not in loaded:
            read(root, (), None)
    return LoadedSources(tuple(order), includes)


def _read_bytes(resolved: Path, shown: str, at: tuple[ast.Include, str] | None) -> bytes:
    problem = ""
    data = b""
    try:
        if resolved.stat().st_size > MAX_POLICY_BYTES:
            problem = f"{shown} is larger than {MAX_POLICY_BYTES >> 20} MiB"
        else:
            data = resolved.read_bytes()
    except IsADirectoryError:
        problem = f"{shown} is a directory, not a policy file"
    except OSError as exc:
        problem = f"cannot read {shown}: {exc.strerror or exc}"
    if not problem:
        return data
    if at is None:
        raise PolicyError(problem, [], hint="check the path; policy files end in .aegis")
    include, includer_source = at
    raise PolicyCheckError(
        [
            Diagnostic.at(
                "error", include.span, problem, source=includer_source, hint="includes are relative to this file"
            )
        ]
    )


def let_scopes(sources: LoadedSources) -> dict[str, dict[str, ast.Let]]:
    """The `let` names each file sees: its own, then those of the files it includes (transitively, first wins)."""
    by_path = {file.path: file.policy for file in sources.files}
    scopes: dict[str, dict[str, ast.Let]] = {}

    def scope(path: str, visiting: frozenset[str]) -> dict[str, ast.Let]:
        if path in scopes:
            return scopes[path]
        names = {let.name: let for let in by_path[path].lets}
        for child in sources.includes.get(path, ()):
            if child in visiting or child not in by_path:
                continue
            for name, let in scope(child, visiting | {path}).items():
                names.setdefault(name, let)
        scopes[path] = names
        return names

    for file in sources.files:
        scope(file.path, frozenset())
    return scopes


def check_sources(sources: LoadedSources, *, known_categories: frozenset[str] | None = None) -> list[Diagnostic]:
    """The front-end's static checks over the whole set (errors and warnings)."""
    from aegis_proxy.policy.checks import check_policy
    from aegis_proxy.scanners.registry import known_categories as registry_categories

    categories = known_categories if known_categories is not None else registry_categories()
    return list(check_policy(list(sources.policies), known_categories=categories))


def compile_sources(
    sources: LoadedSources,
    *,
    warnings: Sequence[Diagnostic] = (),
    clock: Callable[[], float] | None = None,
) -> PolicySet:
    """Compile checked sources. A compile error (which the checks should have caught) is reported the same way."""
    try:
        return build_policy_set(
            sources.policies, digest=sources.digest, scopes=let_scopes(sources), warnings=warnings, clock=clock
        )
    except PolicyCompileError as exc:
        if exc.span is None:
            raise PolicyError(exc.reason, [], hint=exc.hint) from None
        text = next((file.policy.source for file in sources.files if file.path == exc.span.file), None)
        raise PolicyCheckError([Diagnostic.at("error", exc.span, exc.reason, source=text, hint=exc.hint)]) from None


def load_policy(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    known_categories: frozenset[str] | None = None,
    clock: Callable[[], float] | None = None,
    attempted: list[Path] | None = None,
) -> PolicySet:
    """Read, parse, resolve includes, check and compile. Raises PolicyError (PolicySyntaxError, PolicyCheckError)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources = read_sources(paths, attempted=attempted)
    diagnostics = check_sources(sources, known_categories=known_categories)
    if any(d.is_error for d in diagnostics):
        raise PolicyCheckError(diagnostics)
    return compile_sources(sources, warnings=[d for d in diagnostics if not d.is_error], clock=clock)
