"""SQL: statements that destroy, unscope, escalate or reach outside the database, and injection fragments in values.

Two different questions, asked of different strings:

1. *Statements* an agent will run (a database tool, an argument named `sql`/`query`/`statement`, `psql -c ...`):
   comments and string literals are stripped first, so `SELECT 'DROP TABLE x'` is a SELECT; MySQL versioned comments
   (`/*!50000 DROP TABLE x */`) are kept because MySQL executes them. Then each statement is judged: DROP/TRUNCATE
   (`sql.destructive`), DELETE/UPDATE without a real WHERE (`sql.no_where`), GRANT ALL / CREATE USER (`sql.privilege`),
   INTO OUTFILE / COPY ... TO PROGRAM / xp_cmdshell (`sql.file_access`), and a dangerous statement stacked after an
   innocuous one (`sql.stacked`). Several harmless statements (a migration) are INFO.
2. *Values* that will be pasted into someone else's SQL (a `username`, an `id`, a URL query): quote-breaks followed by
   boolean tautologies, UNION SELECT, stacked statements, time-based probes, comment tricks (`sql.tautology`,
   `sql.stacked`).

Context decides severity: SQL written to a file or quoted in a message is not run (LOW at most); prose that merely talks
about SQL ("how to drop a table in postgres") is not SQL at all (every statement must start with a SQL verb).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.safe_regex import Match, compile_pattern
from aegis_proxy.scanners.base import FindingSink, Scanner, ScanSettings, ScanTarget, text_cache
from aegis_proxy.scanners.vocabulary import EDITOR_WORDS, FILE_WRITE_VERBS, MESSAGE_VERBS, argument_words, name_words


def _split(words: str) -> frozenset[str]:
    return frozenset(words.split())


# --- where SQL runs ---------------------------------------------------------------------------------------------------

# Tool-name words meaning "this tool runs SQL".
DB_TOOL_WORDS = _split("""
    sql db database postgres postgresql psql pg mysql mariadb sqlite sqlite3 mssql sqlserver tsql oracle bigquery bq
    snowflake redshift clickhouse duckdb supabase neon planetscale athena trino presto cockroach cockroachdb tidb
    spanner turso libsql d1 databricks warehouse
""")
# Tool-name words meaning "this tool searches or reads documents": its `query` argument is prose.
SEARCH_TOOL_WORDS = _split("""
    search web google bing duckduckgo browse browser docs doc documentation knowledge kb rag retrieve retrieval lookup
    find wiki wikipedia vector semantic memory recall grep news arxiv scholar
""")
# Tool-name words meaning "this tool writes a file or sends a message": SQL in its arguments is quoted, not run.
WRITE_TOOL_WORDS = FILE_WRITE_VERBS | EDITOR_WORDS | _split("notebook file files")
MESSAGE_TOOL_WORDS = MESSAGE_VERBS
_QUOTING_TOOL_WORDS = WRITE_TOOL_WORDS | MESSAGE_TOOL_WORDS
# Argument-name words meaning "this string is a SQL statement".
SQL_ARG_WORDS = _split("sql statement statements stmt ddl dml querystring")
# Argument-name words meaning "this string is a value that may be pasted into SQL by the receiving system".
VALUE_ARG_WORDS = _split("""
    username user login email mail id uid pid name search q term keyword keywords filter param params value password
    pass field sort order orderby where category page table column key account item product sku slug handle
""")
# Argument-name words meaning prose or file content: SQL there is quoted, not run.
CONTENT_ARG_WORDS = _split("content contents text body message description comment note notes markdown code source")

# `program -> flags whose next argument is SQL`; "*" means "positional arguments after the database are SQL".
DB_CLIENT_FLAGS: dict[str, tuple[str, ...]] = {
    "psql": ("-c", "--command"),
    "usql": ("-c", "--command"),
    "mysql": ("-e", "--execute"),
    "mariadb": ("-e", "--execute"),
    "cockroach": ("-e", "--execute"),
    "clickhouse-client": ("-q", "--query"),
    "clickhouse": ("-q", "--query"),
    "sqlcmd": ("-Q", "-q"),
    "snowsql": ("-q", "--query"),
    "trino": ("--execute",),
    "presto": ("--execute",),
    "duckdb": ("-c", "*"),
    "sqlite3": ("-cmd", "*"),
    "bq": ("*",),
}
_DB_CLIENT_WORD = compile_pattern(r"\b(?:psql|usql|mysql|mariadb|sqlite3|duckdb|sqlcmd|clickhouse-client|snowsql|bq)\b")
_QUOTED_ARG = compile_pattern(r"\"((?:[^\"\\]|\\[\s\S])*)\"|'([^']*)'")

# Statements start with one of these; anything else ("how to drop a table") is prose.
SQL_VERBS = _split("""
    select with insert update delete merge upsert replace drop create alter truncate grant revoke rename comment copy
    load explain analyze analyse describe desc show set use begin start commit rollback savepoint release call exec
    execute do declare prepare deallocate vacuum reindex cluster refresh lock unlock pragma attach detach values table
    shutdown kill backup restore reset discard optimize repair flush purge install uninstall handler
""")
# Verbs that only read or set up: a statement with one of these first and a dangerous one later is `sql.stacked`.
MAX_SQL_CHARS = 65_536  # analysed in full; beyond, a plain keyword search (RE2, linear) still runs
MAX_VALUE_CHARS = 8_192  # injection payloads are short; values are analysed up to this length
SHORT_TEXT = 512  # a single-line string at most this long is a "value" even when its argument name says nothing
MAX_STATEMENTS = 500
MAX_DYNAMIC_STRINGS = 64
MAX_LEXEMES = 4_000  # comments and literals stripped per text (each costs a callback)


class _Place(enum.Enum):
    """Where a string sits, which caps the severity of what is found in it."""

    EXEC = "exec"  # SQL a database will run
    LOOSE = "loose"  # a whole argument that is SQL, in a tool we cannot classify: ask, do not deny
    QUOTED = "quoted"  # SQL in a file being written, a message, a search: not run here


_CAP = {_Place.EXEC: Severity.CRITICAL, _Place.LOOSE: Severity.MEDIUM, _Place.QUOTED: Severity.LOW}


# --- statement rules --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SqlRule:
    category: str
    severity: Severity
    pattern: str  # RE2, case-insensitive, applied to a statement level with literals and comments stripped
    message: str


STATEMENT_RULES: tuple[SqlRule, ...] = (
    SqlRule(
        "sql.destructive",
        Severity.HIGH,
        r"\bdrop\s+(?:temporary\s+|temp\s+)?(?:table|database|schema)\b",
        "DROP TABLE/DATABASE/SCHEMA",
    ),
    SqlRule("sql.destructive", Severity.HIGH, r"(?:^|[\s;])truncate\s+(?:table\s+|only\s+)*[\w?\[\"`]", "TRUNCATE"),
    SqlRule("sql.destructive", Severity.HIGH, r"\balter\s+table\b[^;]*?\bdrop\b", "ALTER TABLE ... DROP"),
    SqlRule("sql.destructive", Severity.HIGH, r"^\s*shutdown\b", "SHUTDOWN"),
    SqlRule(
        "sql.destructive",
        Severity.MEDIUM,
        r"\bdrop\s+(?:materialized\s+)?(?:view|index|function|procedure|trigger|sequence|type|extension|"
        r"collection|policy|rule|event|tablespace|owned)\b",
        "DROP of a database object",
    ),
    SqlRule("sql.privilege", Severity.HIGH, r"\bgrant\s+all\b", "GRANT ALL"),
    SqlRule(
        "sql.privilege",
        Severity.HIGH,
        r"\bgrant\b[^;]*\bwith\s+(?:grant|admin)\s+option\b",
        "GRANT ... WITH GRANT OPTION",
    ),
    SqlRule(
        "sql.privilege",
        Severity.HIGH,
        r"\bgrant\s+(?:super|file|process|shutdown|pg_read_server_files|pg_write_server_files|"
        r"pg_execute_server_program|rds_superuser|sysadmin|db_owner|dba)\b",
        "GRANT of a superuser-level role",
    ),
    SqlRule("sql.privilege", Severity.HIGH, r"\bcreate\s+(?:user|role|login)\b", "CREATE USER/ROLE"),
    SqlRule(
        "sql.privilege",
        Severity.HIGH,
        r"\balter\s+(?:user|role|login)\b[^;]*\b(?:password|superuser|identified|createrole|createdb|bypassrls|"
        r"replication)\b",
        "ALTER USER ... PASSWORD/SUPERUSER",
    ),
    SqlRule("sql.privilege", Severity.HIGH, r"\bset\s+password\b|\bidentified\s+by\b", "password change"),
    SqlRule("sql.privilege", Severity.HIGH, r"\bdrop\s+(?:user|role|login)\b", "DROP USER/ROLE"),
    SqlRule(
        "sql.privilege",
        Severity.HIGH,
        r"\balter\s+server\s+role\b|\bsp_addsrvrolemember\b|\bsp_addlogin\b",
        "server role change",
    ),
    # Ordinary grants (SELECT to an analyst role) are routine administration; the dangerous ones are matched above.
    SqlRule("sql.privilege", Severity.LOW, r"(?:^|[\s;])grant\s", "GRANT"),
    SqlRule("sql.file_access", Severity.HIGH, r"\binto\s+(?:outfile|dumpfile)\b", "SELECT ... INTO OUTFILE"),
    SqlRule("sql.file_access", Severity.HIGH, r"\bload_file\s*\(", "LOAD_FILE()"),
    SqlRule(
        "sql.file_access",
        Severity.HIGH,
        r"\bload\s+data\s+(?:low_priority\s+|concurrent\s+)?(?:local\s+)?infile\b",
        "LOAD DATA INFILE",
    ),
    SqlRule("sql.file_access", Severity.HIGH, r"\bcopy\b[^;]*\b(?:to|from)\s+program\b", "COPY ... PROGRAM"),
    SqlRule("sql.file_access", Severity.MEDIUM, r"\bcopy\b[^;]*\bto\s+\?", "COPY ... TO a server file"),
    SqlRule(
        "sql.file_access",
        Severity.HIGH,
        r"\bxp_cmdshell\b|\bsp_oacreate\b|\bxp_dirtree\b|\bxp_regread\b",
        "xp_cmdshell / OLE automation",
    ),
    SqlRule(
        "sql.file_access",
        Severity.HIGH,
        r"\b(?:pg_read_file|pg_read_binary_file|pg_ls_dir|pg_stat_file|lo_import|lo_export|sys_exec|sys_eval|"
        r"load_extension|openrowset|opendatasource)\s*\(",
        "server file or program access function",
    ),
    SqlRule(
        "sql.file_access",
        Severity.HIGH,
        r"\b(?:utl_file|utl_http|utl_inaddr|dbms_ldap|dbms_java)\b",
        "Oracle file/network package",
    ),
    SqlRule(
        "sql.file_access",
        Severity.HIGH,
        r"\bcreate\s+(?:or\s+replace\s+)?(?:function|procedure)\b[^;]*\blanguage\s+"
        r"(?:c|plpython3?u|plperlu|pltclu|plsh|java)\b",
        "function in an untrusted language",
    ),
    SqlRule(
        "sql.file_access",
        Severity.HIGH,
        r"\bcreate\s+extension\s+(?:if\s+not\s+exists\s+)?(?:plpython3?u|plperlu|pltclu|plsh|adminpack|file_fdw)\b",
        "extension with file or program access",
    ),
    SqlRule("sql.file_access", Severity.MEDIUM, r"\bsp_configure\b", "sp_configure"),
    SqlRule("sql.file_access", Severity.MEDIUM, r"\battach\s+(?:database\s+)?\?", "SQLite ATTACH of a file"),
)
_STATEMENT_RULES = tuple((rule, compile_pattern(rule.pattern, ignore_case=True)) for rule in STATEMENT_RULES)
# All statement rules at once: most statement levels (a subquery, a window clause) match none, in one pass.
_ANY_STATEMENT_RULE = compile_pattern("|".join(f"(?:{rule.pattern})" for rule in STATEMENT_RULES), ignore_case=True)

# Stripping: comments and literals out, versioned comments' content in. Alternatives are tried left to right.
_LEXEME = compile_pattern(
    r"(/\*![0-9]*)"  # 1: MySQL versioned comment opener: what follows executes
    r"|(/\*[\s\S]*?\*/|/\*[\s\S]*|--(?:[ \t\r\f\v][^\n]*|\n|$))"  # 2: comments (MySQL needs a space after --)
    r"|('(?:[^'\\]|\\[\s\S]|'')*')"  # 3: string, backslash escapes (MySQL)
    r"|(\"(?:[^\"]|\"\")*\"|`[^`]*`|\$\$[\s\S]*?\$\$)"  # 4: quoted identifier, MySQL string, dollar-quoted body
    r"|(\*/)"  # 5: the end of a versioned comment
)
# The same with standard strings (backslash is an ordinary character: PostgreSQL, SQLite, SQL Server). Both readings
# are analysed when the text has a backslash, because each can hide what the other shows.
_LEXEME_STANDARD = compile_pattern(
    r"(/\*![0-9]*)|(/\*[\s\S]*?\*/|/\*[\s\S]*|--(?:[ \t\r\f\v][^\n]*|\n|$))|('(?:[^']|'')*')"
    r"|(\"(?:[^\"]|\"\")*\"|`[^`]*`|\$\$[\s\S]*?\$\$)|(\*/)"
)
_CTE_PREFIX = compile_pattern(
    r"^\s*with\s+(?:recursive\s+)?(?:[\w?.]+\s*(?:\(\))?\s*as\s*(?:not\s+)?(?:materialized\s+)?\(\)\s*,?\s*)+",
    ignore_case=True,
)
_EXPLAIN_PREFIX = compile_pattern(
    r"^\s*explain\s+(?:\(\)\s*)?(?:(?:analyze|analyse|verbose|costs|buffers|extended|query\s+plan|format\s+\w+)\s+)*",
    ignore_case=True,
)
_WHERE = compile_pattern(r"\bwhere\b", ignore_case=True)
_SET = compile_pattern(r"\bset\b", ignore_case=True)
_LIMIT = compile_pattern(r"\blimit\b|\btop\s*\(", ignore_case=True)
# A WHERE that is always true, as the whole condition or OR-ed in: `WHERE 1=1`, `WHERE true`, `... OR 'a'='a'`.
_TAUTOLOGY = compile_pattern(
    r"\b(where|or)\s+(?:\(\)\s*)?(true|not\s+false|1|\?\s*=\s*\?|([0-9]+)\s*(=|<>|!=|>=|<=|>|<)\s*([0-9]+))"
    r"\s*(?:$|or\b|order\b|limit\b|returning\b|group\b|\))",  # not AND: `WHERE 1=1 AND x` still filters
    ignore_case=True,
)
# SQL built from strings and then run: EXEC('DR'+'OP ...'), PREPARE s FROM @q, EXECUTE IMMEDIATE '...', sp_executesql.
_DYNAMIC_SQL = compile_pattern(
    r"\b(?:exec|execute)\s*(?:immediate\s+)?\(?\s*(?:\?|@|concat\b|format\b)|\bprepare\s+\w+\s+from\b"
    r"|\bsp_executesql\b",
    ignore_case=True,
)
# Injection-shaped SQL that an agent runs itself: a UNION SELECT after an impossible id, or ending in a comment that
# cuts off the rest of a query. Legitimate UNION queries have neither.
_INJECTION_SHAPED = compile_pattern(
    r"=\s*-[0-9]+\s*\)*\s*union\s+(?:all\s+)?select\b|\bunion\s+(?:all\s+)?select\b[^;]*(?:--|#)[^\n]*$",
    ignore_case=True,
)
# Beyond MAX_SQL_CHARS: the dangerous keywords, searched without stripping (may over-report, never under-report).
_LONG_TAIL = compile_pattern(
    r"\bdrop\s+(?:table|database|schema)\b|\btruncate\s+table\b|\bdelete\s+from\b|\bxp_cmdshell\b|"
    r"\binto\s+outfile\b|\bto\s+program\b|\bgrant\s+all\b",
    ignore_case=True,
)

# --- injection rules (values) -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InjectionRule:
    name: str
    category: str
    pattern: str  # RE2, case-insensitive, applied to the value after URL-decoding and comment removal
    strong: bool  # strong: checked in any short string; weak: only in value-like arguments
    check: str = ""  # "equal": groups 1 and 2 must be equal numbers


_QUOTE_BREAK = r"(?:['\"]|\b[0-9]+)\s*\)*\s*"
INJECTION_RULES: tuple[InjectionRule, ...] = (
    InjectionRule(
        "quote-break boolean condition",
        "sql.tautology",
        r"['\"]\s*\)*\s*(?:or|and|\|\||&&)\s+\(*\s*(?:'[^']*'|\"[^\"]*\"|[0-9]+|true|false|null)\s*"
        r"(?:=|<>|!=|<=?|>=?|\blike\b|\bis\b)\s*(?:['\"(0-9]|true\b|false\b|null\b|not\b)",
        strong=True,
    ),
    InjectionRule(
        "quote-break OR TRUE",
        "sql.tautology",
        r"['\"]\s*\)*\s*(?:or|\|\|)\s+(?:true|not\s+false|[0-9]+)\s*(?:--|#|/\*|;|$)",
        strong=True,
    ),
    InjectionRule("numeric tautology", "sql.tautology", r"\b(?:or|\|\|)\s+([0-9]+)\s*=\s*([0-9]+)\b", True, "equal"),
    InjectionRule("UNION SELECT", "sql.tautology", _QUOTE_BREAK + r"union\s+(?:all\s+|distinct\s+)?select\b", True),
    InjectionRule(
        "stacked statement",
        "sql.stacked",
        r"(?:['\"\)]|\b[0-9]+|^)\s*;\s*(?:drop\s+(?:table|database|schema)|delete\s+from|truncate\s|insert\s+into|"
        r"update\s+[\w.`\"\[\]]+\s+set|exec(?:ute)?\s+(?:xp_|sp_|master\.|immediate)|shutdown\b|alter\s+(?:table|user)|"
        r"create\s+(?:user|table|login)|grant\s|waitfor\s+delay|select\s+(?:sleep|pg_sleep|benchmark|load_file|"
        r"@@version|version)\b|select\s[^;]{0,200}?\bfrom\b)",
        strong=True,
    ),
    InjectionRule(
        "time-based blind probe",
        "sql.tautology",
        _QUOTE_BREAK + r"(?:and|or|;|\|\||&&)\s*\(*\s*(?:select\s+)?"
        r"(?:sleep|pg_sleep|benchmark|dbms_lock\.sleep|waitfor\s+delay)\b",
        strong=True,
    ),
    InjectionRule(
        "error-based probe", "sql.tautology", r"\b(?:extractvalue|updatexml)\s*\(\s*[0-9]+\s*,\s*concat\s*\(", True
    ),
    InjectionRule("quote-break comment", "sql.tautology", r"\w['\"]\s?\)?\s?(?:--|#|/\*)", strong=False),
    InjectionRule(
        "quote-break condition",
        "sql.tautology",
        r"['\"]\s*\)*\s*(?:or|and)\s+[\w.]+\s*(?:=|<>|!=|\blike\b|<|>)",
        strong=False,
    ),
    InjectionRule(
        "quote-break ORDER BY probe", "sql.tautology", r"['\"]\s*\)*\s*(?:order|group)\s+by\s+[0-9]", strong=False
    ),
    InjectionRule("comment used as whitespace", "sql.tautology", r"\w/\*\*/\w|/\*![0-9]*\w", strong=False),
)
_INJECTION_RULES = tuple((rule, compile_pattern(rule.pattern, ignore_case=True)) for rule in INJECTION_RULES)
# Every injection rule at once: one pass rules out the usual string (each rule then runs only if this matched).
_ANY_INJECTION = compile_pattern("|".join(f"(?:{rule.pattern})" for rule in INJECTION_RULES), ignore_case=True)
_VALUE_COMMENT = compile_pattern(r"/\*![0-9]*|/\*[\s\S]*?\*/|\*/")
_URL = compile_pattern(r"[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s\"'<>`]+")
_LOOKS_LIKE_SQL = compile_pattern(
    r"^[\s(]*(?:select\b[\s\S]*\bfrom\b|insert\s+into\b|update\s+[\w.\"`\[\]]+\s+set\b|delete\s+from\b|"
    r"drop\s+(?:table|database|schema|view|index|user|role)\b|create\s+(?:table|index|unique|user|role|database|"
    r"schema|view|function|procedure|trigger|extension)\b|alter\s+(?:table|user|role|database)\b|truncate\s|"
    r"grant\s|revoke\s|with\s+(?:recursive\s+)?\w+\s+as\s*\(|copy\s+\w|merge\s+into\b|explain\s)",
    ignore_case=True,
)
# Is a string worth a closer look at all: SQL at its start, or any injection fragment. One pass for most strings.
_SQLISH = compile_pattern(
    "|".join([f"(?:{_LOOKS_LIKE_SQL.pattern})"] + [f"(?:{rule.pattern})" for rule in INJECTION_RULES]),
    ignore_case=True,
)


@text_cache
def _may_be_sql(text: str) -> bool:
    """Could any statement or injection rule match? Plain substring tests first (no regex call for most strings):
    every injection rule needs one of these characters or words, and a statement must start with a verb."""
    head = text[:MAX_VALUE_CHARS]
    if "%" in head:
        return True  # URL-encoded: decode before judging
    return _has_sql_marker(head) and _SQLISH.search(head) is not None


def _has_sql_marker(head: str) -> bool:
    for mark in _INJECTION_MARKS:
        if mark in head:
            return True
    lowered = head.lower()
    for word in _INJECTION_WORDS:
        if word in lowered:
            return True
    return lowered.lstrip(" \t\r\n(").split(" ", 1)[0] in _STATEMENT_START


_INJECTION_MARKS = ("'", '"', ";", "#", "--", "/*", "||", "&&", "=")
_INJECTION_WORDS = ("union", "sleep", "benchmark", "waitfor", "extractvalue", "updatexml")
_STATEMENT_START = _split("select insert update delete drop create alter truncate grant revoke with copy merge explain")


# --- stripping and splitting ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stripped:
    text: str  # literals replaced by `?`, comments by a space
    literals: list[str]  # contents of string literals (for dynamic SQL), bounded


def _strip(sql: str, lexeme: object) -> _Stripped:
    literals: list[str] = []

    def replace(match: Match) -> str:
        if match.start(3) >= 0:
            if len(literals) < MAX_DYNAMIC_STRINGS:
                literals.append(match.group(3)[1:-1][:MAX_VALUE_CHARS])
            return "?"
        if match.start(4) >= 0:
            return "?"
        return " "

    # Bounded: past MAX_LEXEMES the rest is left as written, which can only add findings, never hide one.
    return _Stripped(lexeme.sub(replace, sql, count=MAX_LEXEMES), literals)  # type: ignore[attr-defined]


def _levels(statement: str) -> tuple[str, list[str]]:
    """(top-level text, [text of each parenthesised group]), every nested group collapsed to `()`.

    Linear: it jumps between parentheses with str.find. An unclosed `(` hides nothing: its text stays in its parent.
    """
    stack: list[list[str]] = [[]]  # pieces of the top level, then of each open group
    groups: list[str] = []
    position, length = 0, len(statement)
    next_open, next_close = statement.find("("), statement.find(")")
    while position < length:
        candidates = [p for p in (next_open, next_close) if p >= 0]
        if not candidates:
            stack[-1].append(statement[position:])
            break
        paren = min(candidates)
        stack[-1].append(statement[position:paren])
        if paren == next_open:
            stack[-1].append("()")
            stack.append([])
            next_open = statement.find("(", paren + 1)
        else:
            if len(stack) > 1:
                groups.append("".join(stack.pop()))
            next_close = statement.find(")", paren + 1)
        position = paren + 1
    while len(stack) > 1:
        unclosed = "".join(stack.pop())
        stack[-1].append(" " + unclosed)
    return "".join(stack[0]), groups


def _main_verb(level: str) -> str:
    """First word after any WITH ... AS () prefix and EXPLAIN options, lowercase ("" if none)."""
    word = _first_word(level)
    if word in ("with", "explain"):
        prefix = (_CTE_PREFIX if word == "with" else _EXPLAIN_PREFIX).match(level)
        if prefix:
            word = _first_word(level[prefix.end() :])
    return word


def _first_word(text: str) -> str:
    """Leading word (letters and underscores) after spaces and opening parentheses, lowercase; plain string ops."""
    text = text.lstrip(" \t\r\n\f\v(")
    end = 0
    while end < len(text) and end < 32 and (text[end].isascii() and (text[end].isalpha() or text[end] == "_")):
        end += 1
    return text[:end].lower()


# --- analysis ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hit:
    category: str
    severity: Severity
    message: str


def analyze_sql(sql: str) -> list[tuple[str, Severity, str]]:
    """Judge `sql` as statements a database will run: [(category, severity, message)]. Never raises on str input."""
    return [(hit.category, hit.severity, hit.message) for hit in _analyze(sql, depth=0)]


@text_cache
def _sql_hits(sql: str) -> tuple[_Hit, ...]:
    return tuple(_analyze(sql, depth=0))


def _analyze(sql: str, depth: int) -> list[_Hit]:
    head = sql[:MAX_SQL_CHARS]
    hits = _analyze_reading(head, _LEXEME, depth)
    if "\\" in head:
        seen = {(h.category, h.message) for h in hits}
        hits += [h for h in _analyze_reading(head, _LEXEME_STANDARD, depth) if (h.category, h.message) not in seen]
    if len(sql) > MAX_SQL_CHARS and _LONG_TAIL.search(sql[MAX_SQL_CHARS:]):
        hits.append(_Hit("sql.destructive", Severity.MEDIUM, "dangerous keyword beyond the analysed first 64 KiB"))
    return hits


def _analyze_reading(sql: str, lexeme: object, depth: int) -> list[_Hit]:
    stripped = _strip(sql, lexeme)
    statements = [s for s in stripped.text.split(";")[:MAX_STATEMENTS] if s.strip()]
    per_statement: list[list[_Hit]] = []
    verbs: list[str] = []
    for statement in statements:
        top, groups = _levels(statement)
        verb = _main_verb(top)
        if verb not in SQL_VERBS:
            continue
        verbs.append(verb)
        per_statement.append(_statement_hits(top, groups))
    hits = [hit for statement_hits in per_statement for hit in statement_hits]
    if len(per_statement) >= 2:
        first_dangerous = any(h.severity >= Severity.HIGH for h in per_statement[0])
        later = [i for i, found in enumerate(per_statement[1:], 1) if any(h.severity >= Severity.HIGH for h in found)]
        if later and not first_dangerous:
            hits.append(
                _Hit(
                    "sql.stacked", Severity.HIGH, f"dangerous statement {later[0] + 1} stacked after {verbs[0].upper()}"
                )
            )
        elif not later:
            hits.append(_Hit("sql.stacked", Severity.INFO, f"{len(per_statement)} statements"))
    if depth == 0 and stripped.literals and _DYNAMIC_SQL.search(stripped.text):
        # Judge each literal, and all of them joined: 'DR' + 'OP TABLE users' is a DROP TABLE.
        pieces = [literal.replace("''", "'") for literal in stripped.literals]
        for piece in [*pieces, "".join(pieces)]:
            for hit in _analyze(piece, depth=1):
                hits.append(_Hit(hit.category, hit.severity, f"dynamic SQL: {hit.message}"))
    if depth == 0 and _INJECTION_SHAPED.search(sql):
        hits.append(_Hit("sql.tautology", Severity.MEDIUM, "injection-shaped UNION SELECT"))
    return hits


def _statement_hits(top: str, groups: list[str]) -> list[_Hit]:
    hits: list[_Hit] = []
    seen: set[str] = set()
    levels = [top, *groups]
    for level in levels:
        if not _ANY_STATEMENT_RULE.search(level):
            hits.extend(_scope_hits(level))
            continue
        for rule, pattern in _STATEMENT_RULES:
            if rule.message not in seen and pattern.search(level):
                seen.add(rule.message)
                hits.append(_Hit(rule.category, rule.severity, rule.message))
        hits.extend(_scope_hits(level))
    # A privilege rule that matched also matches the generic GRANT rule: keep the specific one.
    if any(h.category == "sql.privilege" and h.severity >= Severity.HIGH for h in hits):
        hits = [h for h in hits if h.message != "GRANT"]
    return hits


def _scope_hits(level: str) -> list[_Hit]:
    """DELETE/UPDATE whose WHERE is missing or always true, at this nesting level."""
    verb = _main_verb(level)
    if verb == "delete" or (verb == "update" and _SET.search(level)):
        statement = verb.upper()
        if not _WHERE.search(level):
            severity = Severity.MEDIUM if _LIMIT.search(level) else Severity.HIGH
            return [_Hit("sql.no_where", severity, f"{statement} without WHERE")]
        if _always_true(level):
            return [_Hit("sql.no_where", Severity.HIGH, f"{statement} whose WHERE is always true")]
        return []
    if verb == "select" and "or" in level.lower() and _always_true(level, or_only=True):
        return [_Hit("sql.tautology", Severity.MEDIUM, "SELECT with an always-true OR condition")]
    return []


def _always_true(level: str, *, or_only: bool = False) -> bool:
    for match in _TAUTOLOGY.finditer(level):
        keyword = match.group(1).lower()
        if or_only and keyword != "or":
            continue
        if match.start(3) < 0 or _compare(match.group(3), match.group(4), match.group(5)):
            return True
    return False


def _compare(left: str, operator: str, right: str) -> bool:
    a, b = int(left[:18]), int(right[:18])
    return {
        "=": a == b,
        "<>": a != b,
        "!=": a != b,
        ">=": a >= b,
        "<=": a <= b,
        ">": a > b,
        "<": a < b,
    }[operator]


def injection_hits(value: str, *, value_like: bool) -> list[tuple[str, str]]:
    """[(category, rule name)] for SQL-injection fragments in a value. Weak rules only when `value_like`."""
    return list(_injection_hits(value, value_like))


@text_cache
def _injection_hits(value: str, value_like: bool) -> tuple[tuple[str, str], ...]:
    head = value[:MAX_VALUE_CHARS]
    variants = [head]
    if "%" in head:
        decoded = head
        for _ in range(2):  # double encoding is a classic filter bypass
            if "%" not in decoded:
                break
            decoded = unquote_to_bytes(decoded.replace("+", " ")).decode("utf-8", "replace")
            variants.append(decoded)
    found: list[tuple[str, str]] = []
    for variant in variants:
        if not _ANY_INJECTION.search(variant):
            continue
        normalised = _VALUE_COMMENT.sub(" ", variant) if "/*" in variant or "*/" in variant else variant
        for rule, pattern in _INJECTION_RULES:
            if not (rule.strong or value_like) or any(name == rule.name for _, name in found):
                continue
            text = variant if rule.name == "comment used as whitespace" else normalised
            match = pattern.search(text)
            if match and (rule.check != "equal" or match.group(1).lstrip("0") == match.group(2).lstrip("0")):
                found.append((rule.category, rule.name))
    return tuple(found)


# --- the scanner ------------------------------------------------------------------------------------------------------


class SqlScanner(Scanner):
    name = "sql"
    categories = frozenset(
        {
            "sql.destructive",
            "sql.no_where",
            "sql.stacked",
            "sql.tautology",
            "sql.privilege",
            "sql.file_access",
        }
    )

    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        sink = FindingSink(self.name)
        tool = name_words(call.tool)
        db_tool = bool(tool & DB_TOOL_WORDS) or ("query" in tool and not tool & SEARCH_TOOL_WORDS)
        search_tool = bool(tool & SEARCH_TOOL_WORDS) and not tool & DB_TOOL_WORDS
        quoting_tool = bool(tool & _QUOTING_TOOL_WORDS) and not db_tool
        for target in targets:
            if target.is_key or not target.text.strip():
                continue
            arg = argument_words(target.path)
            if target.exec_position and not (db_tool or arg & SQL_ARG_WORDS or "query" in arg):
                # A shell command line (an `execute_sql` tool's query is "exec position" too, but it is SQL).
                self._scan_shell(sink, target)
                continue
            sql_named = db_tool or bool(arg & SQL_ARG_WORDS) or ("query" in arg and not search_tool)
            if not sql_named and not _may_be_sql(target.text):
                continue
            place = self._statement_place(target, arg, db_tool, search_tool, quoting_tool)
            if place is not None:
                self._report_sql(sink, target, target.text, place, "")
            self._scan_value(sink, target, arg, db_tool, quoting_tool, sql_arg=place is _Place.EXEC)
        return sink.findings

    @staticmethod
    def _statement_place(
        target: ScanTarget, arg: frozenset[str], db_tool: bool, search_tool: bool, quoting_tool: bool
    ) -> _Place | None:
        """Should this string be judged as statements, and how seriously? None: it is not SQL."""
        text = target.text
        named_sql = bool(arg & SQL_ARG_WORDS) or ("query" in arg and not search_tool)
        if quoting_tool or search_tool or (arg & CONTENT_ARG_WORDS and not db_tool):
            return _Place.QUOTED if _LOOKS_LIKE_SQL.search(text[:4096]) else None
        if db_tool or named_sql:
            return _Place.EXEC
        return _Place.LOOSE if _LOOKS_LIKE_SQL.search(text[:4096]) else None

    @staticmethod
    def _report_sql(sink: FindingSink, target: ScanTarget, sql: str, place: _Place, origin: str) -> None:
        cap = _CAP[place]
        reported: set[tuple[str, str]] = set()
        for hit in _sql_hits(sql):
            if (hit.category, hit.message) in reported:
                continue
            reported.add((hit.category, hit.message))
            severity = min(hit.severity, cap)
            where = {_Place.EXEC: "", _Place.LOOSE: " (tool not known to run SQL)", _Place.QUOTED: " (quoted, not run)"}
            sink.add(target, hit.category, severity, f"{hit.message}{origin}{where[place]}")

    def _scan_shell(self, sink: FindingSink, target: ScanTarget) -> None:
        for sql in _sql_in_shell(target):
            self._report_sql(sink, target, sql, _Place.EXEC, " (via a database client)")
        urls = [arg for command in target.commands for arg in command.argv[1:] if "://" in arg[:40]]
        if not target.commands:
            urls = [match.group() for match in _URL.finditer(target.text[:65_536])]
        for url in urls[:MAX_DYNAMIC_STRINGS]:
            self._report_injection(sink, target, url, value_like=True, cap=Severity.CRITICAL)

    def _scan_value(
        self,
        sink: FindingSink,
        target: ScanTarget,
        arg: frozenset[str],
        db_tool: bool,
        quoting_tool: bool,
        *,
        sql_arg: bool,
    ) -> None:
        text = target.text
        if sql_arg:
            return  # the statement analysis above already judged it, including always-true conditions
        stripped = text.strip()
        is_url = "://" in stripped[:40] and not any(c.isspace() for c in stripped[:4096])
        value_like = is_url or bool(arg & VALUE_ARG_WORDS) or db_tool
        short = len(stripped) <= SHORT_TEXT and "\n" not in stripped
        if quoting_tool or arg & CONTENT_ARG_WORDS:
            cap = Severity.LOW  # a message or file that mentions an injection string is not an injection
        elif value_like or short:
            cap = Severity.CRITICAL
        else:
            cap = Severity.LOW  # long prose: an article about SQL injection
        self._report_injection(sink, target, text, value_like=value_like and not quoting_tool, cap=cap)

    @staticmethod
    def _report_injection(sink: FindingSink, target: ScanTarget, text: str, *, value_like: bool, cap: Severity) -> None:
        for category, rule_name in injection_hits(text, value_like=value_like):
            sink.add(target, category, min(Severity.HIGH, cap), f"SQL injection: {rule_name}")


def _sql_in_shell(target: ScanTarget) -> list[str]:
    """SQL handed to a database client on the command line (`psql -c`, `mysql -e`, `sqlite3 db "..."`)."""
    found: list[str] = []
    for command in target.commands:
        flags = DB_CLIENT_FLAGS.get(command.program)
        if not flags:
            continue
        argv = command.argv[1:]
        positional: list[str] = []
        index = 0
        while index < len(argv):
            arg = argv[index]
            if arg in flags and index + 1 < len(argv):
                found.append(argv[index + 1])
                index += 2
                continue
            for flag in flags:
                if flag.startswith("--") and arg.startswith(flag + "="):
                    found.append(arg[len(flag) + 1 :])
            if not arg.startswith("-"):
                positional.append(arg)
            index += 1
        if "*" in flags:
            # sqlite3/duckdb: first positional is the database; bq: first is the subcommand.
            found.extend(positional[1:])
    if not target.commands and _DB_CLIENT_WORD.search(target.text[:65_536]):
        # No parsed commands (parser unavailable or gave up): judge every quoted string and any heredoc body.
        for match in _QUOTED_ARG.finditer(target.text[:MAX_SQL_CHARS]):
            found.append(match.group(1) if match.start(1) >= 0 else match.group(2))
            if len(found) >= MAX_DYNAMIC_STRINGS:
                break
        if "<<" in target.text:
            found.append(target.text.split("\n", 1)[-1])
    return found
