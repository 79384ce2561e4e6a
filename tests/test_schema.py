"""Migrations: an empty database migrates to exactly schema.sql; earlier schema.sql databases are
adopted with every row kept; two `migrate` runs at once are safe; only `migrate` changes the schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrations import replaceable, report_zone
from migrations.__main__ import main as generate_schema_sql
from receiver import Settings, create_app, migrator
from receiver.errors import Fatal
from receiver.web import services
from tests.conftest import create_database, drop_database
from tests.support import ROOT, TOKEN, fetch, free_port, post_flask

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The catalog, normalised: what "the same schema" means. alembic_version is migrate's own;
# webhook_events' partitions are data (days), not schema: the partitioned table is compared.
_NOT_A_PARTITION = "NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = {0})"
CATALOG = {
    "columns": """
        SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
               a.attidentity, pg_get_expr(d.adbin, d.adrelid) AS default,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'v', 'm', 'p') AND c.relname <> 'alembic_version'
          AND """ + _NOT_A_PARTITION.format("c.oid"),
    "constraints": """
        SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'alembic_version'
          AND contype <> 'n'  -- NOT NULL (PostgreSQL 18 names them): compared as the columns' attnotnull
          AND """ + _NOT_A_PARTITION.format("conrelid"),
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'
          AND """ + _NOT_A_PARTITION.format("(schemaname || '.' || tablename)::regclass"),
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'",
    "functions": """
        SELECT p.oid::regprocedure::text AS name, pg_get_functiondef(p.oid) AS def FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace""",
    "triggers": "SELECT tgrelid::regclass::text AS tbl, tgname FROM pg_trigger WHERE NOT tgisinternal",
    "grants": """
        SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants
        WHERE table_schema = 'public' AND table_name <> 'alembic_version'
          AND """ + _NOT_A_PARTITION.format("(table_schema || '.' || quote_ident(table_name))::regclass"),
    "partitioning": """
        SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'p'""",
}


def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: sorted(conn.execute(query).fetchall()) for name, query in CATALOG.items()}


@pytest.fixture
def new_database(server_url: str) -> Iterator[Any]:
    """Makes empty databases on the test server; drops them afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"receiver_schema_{uuid.uuid4().hex[:10]}"
        made.append(name)
        return create_database(server_url, name)

    yield make
    for name in made:
        drop_database(server_url, name)


# What `migrate` says when it made every function and view of migrations/replaceable/ again.
EVERY_REPLACEABLE = ("migrations/replaceable/ (changed since the last migrate): "
                     + ", ".join(r.name for r in replaceable.shipped()))


def run_sql(url: str, path: Path) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(path.read_text(encoding="utf-8").encode())


def test_replaying_every_migration_on_an_empty_database_gives_exactly_schema_sql(new_database):
    """What keeps schema.sql honest: `migrate` builds new databases from it, and upgrades existing
    ones with the migrations."""
    migrated, described = new_database(), new_database()
    assert migrator.migrate(migrated, replay=True) == [*migrator.history(), EVERY_REPLACEABLE]
    assert migrator.history()[0] == ("0001 (Initial schema: schema.sql as it stood when migrations began; adopts a "
                                   "database an earlier one made)")
    run_sql(described, ROOT / "schema.sql")
    want, got = catalog(described), catalog(migrated)
    for part in CATALOG:
        assert got[part] == want[part], f"{part}: the migrations and schema.sql disagree"
    assert len(got["functions"]) >= 5 and len(got["indexes"]) >= 10  # the comparison compared something
    assert migrator.migrate(migrated) == []  # nothing left to do


# Rows as the service wrote them before migrations existed (the columns every earlier schema had).
OLD_ROWS = """
INSERT INTO messages (message_id, sub_account, department, recipient_count, poll_state)
VALUES ('old-1', 'acme', 'sales', 2, 'active'), ('old-2', NULL, NULL, NULL, 'complete');
INSERT INTO recipients (message_id, dest_seq, destination, status, result, sent_at, price, sms_parts, source)
VALUES ('old-1', '1', '+61410010001', 'Success', 'delivered', '2025-06-12 20:44:30+00', 0.10, 1, 'webhook'),
       ('old-1', NULL, '+61410010002', 'Pending', 'pending', NULL, NULL, NULL, 'webhook');
INSERT INTO replies (received_id, message_id, dest_seq, type, from_number, message_text, source)
VALUES ('r-1', 'old-1', '1', 'SMSReply', '+61410010001', 'Yes please', 'webhook');
INSERT INTO webhook_events (method, format, kind, message_id, outcome, body)
VALUES ('POST', 'json', 'result', 'old-1', 'applied', '{"MessageID": "old-1"}');
"""


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        return {t: fetch(conn, f"SELECT * FROM {t} ORDER BY 1, 2")
                for t in ("messages", "recipients", "replies", "webhook_events")}


@pytest.mark.parametrize("old_schema", ["schema-cc3a58b.sql", "schema-830874e.sql"])
def test_a_database_made_by_an_earlier_schema_sql_is_adopted_with_every_row(new_database, old_schema):
    """cc3a58b: main when migrations began; 830874e: the first schema.sql that landed (other function
    return types, and a poll_state 'unauthorized' that no longer exists)."""
    url, described = new_database(), new_database()
    run_sql(url, FIXTURES / old_schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(OLD_ROWS.encode())
        if old_schema == "schema-830874e.sql":
            conn.execute("UPDATE messages SET poll_state = 'unauthorized' WHERE message_id = 'old-2'")
    before = snapshot(url)

    assert migrator.migrate(url) == [*migrator.history(), EVERY_REPLACEABLE]
    run_sql(described, ROOT / "schema.sql")
    assert catalog(url) == catalog(described)
    after = snapshot(url)
    for table, rows in after.items():  # columns later migrations added: empty, or filled as they say
        for row, old in zip(rows, before[table], strict=True):
            for column in row.keys() - old.keys():
                value = row.pop(column)
                if (table, column) == ("recipients", "final_at") and row["status"] != "Pending":
                    assert value == row["updated_at"], (table, column)
                elif (table, column) == ("messages", "replies_due"):  # 0005: nothing fetched has failed yet
                    assert value is False
                else:
                    assert value is None, (table, column)
    messages = {m["message_id"]: m for m in before["messages"]}
    for reply, old in zip(after["replies"], before["replies"], strict=True):  # 0006: billed to their message
        message = messages.get(old["message_id"]) or {}
        for column in ("sub_account", "department"):
            old[column] = old[column] or message.get(column)
        if reply["updated_at"] != old["updated_at"]:
            reply.pop("updated_at"), old.pop("updated_at")
    for table in ("recipients", "replies"):  # 0010: DestSeq in the webhooks' 8-character form
        for old in before[table]:
            old["dest_seq"] = old["dest_seq"] and old["dest_seq"].zfill(8)
    if old_schema == "schema-830874e.sql":  # that state is the poller's now, not a message's
        assert [m.pop("poll_state") for m in after["messages"]] == ["active", "active"]
        assert [m.pop("poll_state") for m in before["messages"]] == ["active", "unauthorized"]
    assert after == before

    # The adopted database works: a webhook for the provisional recipient merges into its row.
    app = create_app(Settings(database_url=url, webhook_tokens=(TOKEN,), db_pool_size=1))
    try:
        response = post_flask(app.test_client(), {
            "APIKey": TOKEN, "MessageID": "old-1", "DestSeq": "2", "Destination": "+61410010002",
            "Status": "Success", "Result": "delivered", "SentTimeUTC_RFC3339": "2025-06-12T20:45:00Z"})
    finally:
        services(app).database.close()
    assert response.status_code == 200 and response.get_json()["status"] == "applied"
    with psycopg.connect(url) as conn:
        rows = fetch(conn, "SELECT dest_seq, status FROM recipients WHERE message_id = 'old-1' ORDER BY dest_seq")
    assert rows == [{"dest_seq": "00000001", "status": "Success"}, {"dest_seq": "00000002", "status": "Success"}]


def migrate_command(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "receiver", "migrate"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"})


def test_two_migrate_runs_at_once_build_a_new_database_once(new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as holder:
        # Hold migrate's lock, so that both runs are surely inside it, waiting, at the same time.
        holder.execute("SELECT pg_advisory_lock(7460817344)")
        runs = [migrate_command(url), migrate_command(url)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # each tries the lock again and again (a transaction each try): both connected, both waiting
            waiting = holder.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid()").fetchone()
            if waiting and waiting[0] == 2:
                break
            assert all(run.poll() is None for run in runs), [run.communicate() for run in runs]
            time.sleep(0.1)
        else:
            pytest.fail("the two migrate runs never both waited on the lock")
        holder.execute("SELECT pg_advisory_unlock(7460817344)")
        results = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    outputs = sorted(out for out, _ in results)
    applied = f"applied {migrator.head()}: a new database, built from schema.sql in schema public\n"
    assert outputs == [f"{applied}schema is at revision {migrator.head()}\n",
                       f"schema is at revision {migrator.head()} (nothing to apply)\n"], outputs
    with psycopg.connect(url) as conn:
        assert migrator.version(conn) == migrator.head()


def test_migrate_failure_is_one_clear_line_and_a_non_zero_exit():
    run = migrate_command(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1
    assert err.strip().count("\n") == 0 and err.startswith("error: migrate failed:") and "refused" in err, err


def test_version_check_knows_empty_current_and_newer_databases(new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrator.version(conn) is None
        assert "has no schema" in (migrator.behind(conn) or "") and "migrate" in (migrator.behind(conn) or "")
        migrator.migrate(url)
        assert migrator.version(conn) == migrator.head() and migrator.behind(conn) is None
        # A release step ran a migration this code does not know: it is newer, and served.
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
        assert migrator.behind(conn) is None


def test_the_web_app_never_changes_the_schema_and_serves_once_migrated(new_database):
    url = new_database()
    app = create_app(Settings(database_url=url, webhook_tokens=(TOKEN,), db_pool_size=1))
    fields = {"APIKey": TOKEN, "MessageID": "early-1", "Destination": "+61410010001", "Status": "Success"}
    try:
        client = app.test_client()
        early = post_flask(client, fields)
        assert early.status_code == 503 and "run `python -m receiver migrate`" in early.get_json()["reason"]
        assert early.headers["Retry-After"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "has no schema" in ready.get_json()["reason"]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                                ).fetchone() == (0,)
        migrator.migrate(url)
        # The same app, not restarted, now stores webhooks.
        assert post_flask(client, fields).status_code == 200
        assert client.get("/readyz").get_json()["status"] == "ready"
    finally:
        services(app).database.close()


def test_migrate_puts_report_days_in_the_accounts_time_zone(new_database):
    url = new_database()
    assert migrator.migrate(url) == [f"{migrator.head()}: a new database, built from schema.sql in schema public"]
    changed = migrator.migrate(url, "Pacific/Auckland")
    assert changed == ["report days in Pacific/Auckland (BESTSMS_TIMEZONE): report_day() and its indexes rebuilt"]
    assert migrator.migrate(url, "Pacific/Auckland") == []
    with psycopg.connect(url) as conn:
        # 11:30 UTC on 5 March is 00:30 on the 6th in Auckland (UTC+13), 22:30 on the 5th in Sydney
        assert conn.execute("SELECT report_day('2026-03-05T11:30:00Z')").fetchone() == (
            date(2026, 3, 6),)


def test_a_report_zone_change_left_half_done_is_cleaned_up_by_the_next_migrate(new_database):
    """A migrate killed while it built the new report-day functions and indexes (before the swap)
    leaves them behind: the next one drops them and makes the change whole."""
    url = new_database()
    migrator.migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        report_zone.build_report_zone(conn, "Asia/Tokyo")  # then the process died
    assert migrator.migrate(url, "Pacific/Auckland")[-1].startswith("report days in Pacific/Auckland")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT report_day('2026-03-05T11:30:00Z')").fetchone() == (date(2026, 3, 6),)
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'report\\_%\\_\\_%'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_\\_next'").fetchone() == (0,)


def test_0010_pads_short_destseqs_and_folds_twins_without_losing_a_fact(new_database):
    """A poll that read DestSeq as a number stored "1" beside the webhook's "00000001": after 0010,
    one row, the merge rule's winner, with the references of both; replies follow."""
    from alembic import command

    url = new_database()
    command.upgrade(migrator._config(url), "0009")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO messages (message_id) VALUES ('twin');
            INSERT INTO recipients (message_id, dest_seq, destination, status, result, sent_at, source,
                                    price, remote_id, final_at, updated_at)
            VALUES ('twin', '00000001', '+61410010001', 'Pending', 'Submitted', '2025-06-12 20:44:30+00',
                    'webhook', NULL, NULL, NULL, '2025-06-12 20:44:31+00'),
                   ('twin', '1', '+61410010001', 'Success', 'delivered', '2025-06-12 20:50:00+00', 'poll',
                    0.10, 'crm-77', '2025-06-12 21:00:00+00', '2025-06-12 21:00:00+00'),
                   ('twin', '2', '+61410010002', 'Failed', 'Expired', '2025-06-12 20:50:00+00', 'poll',
                    NULL, NULL, '2025-06-12 21:00:00+00', '2025-06-12 21:00:00+00');
            INSERT INTO replies (received_id, message_id, dest_seq, type, from_number, source)
            VALUES ('r-1', 'twin', '1', 'SMSReply', '+61410010001', 'poll')""")
    assert migrator.migrate(url)[0].startswith("0010 (")
    with psycopg.connect(url) as conn:
        rows = fetch(conn, "SELECT dest_seq, status, result, source, price, remote_id, updated_at FROM recipients "
                           "ORDER BY dest_seq")
        replies = fetch(conn, "SELECT dest_seq FROM replies")
    assert [(r["dest_seq"], r["status"], r["result"], r["source"], r["remote_id"]) for r in rows] == [
        ("00000001", "Success", "delivered", "poll", "crm-77"), ("00000002", "Failed", "Expired", "poll", None)]
    assert str(rows[0]["price"]) == "0.10"
    assert rows[1]["updated_at"] == datetime(2025, 6, 12, 21, tzinfo=UTC)  # padded, not changed
    assert replies == [{"dest_seq": "00000001"}]


def test_a_schema_behind_the_code_is_logged_once_not_per_request(new_database, capfd):
    """503 naming migrate for every webhook and probe, and one "database not usable" line for all
    of them (it was one or two a request: 2,760 lines for 2,965 answers)."""
    url = new_database()
    migrator.migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0008'")
    app = create_app(Settings(database_url=url, webhook_tokens=(TOKEN,), db_pool_size=2))
    try:
        client = app.test_client()
        capfd.readouterr()
        answers = [post_flask(client, {"APIKey": TOKEN, "MessageID": f"behind-{n}", "Destination": "+61410010001",
                                       "Status": "Success"}) for n in range(20)]
        answers += [client.get("/readyz") for _ in range(5)]
        logged = capfd.readouterr().err
    finally:
        services(app).database.close()
    assert {a.status_code for a in answers} == {503}
    assert all("migrate" in a.get_json()["reason"] for a in answers)
    assert logged.count("database not usable") == 1, logged


def test_schema_sql_holds_every_replaceable_file_as_written():
    """Its generated part is what `python -m migrations` writes, never edited by hand."""
    assert generate_schema_sql(["--check"]) == 0, "run `python -m migrations`"
    text = (ROOT / "schema.sql").read_text(encoding="utf-8")
    for file in replaceable.shipped():
        assert file.makes[1] in file.name and file.sql.strip() in text


def migrate_with(url: str, directory: Path) -> list[str]:
    """`migrate` to head, the replaceable files read from `directory`; what it made again."""
    from alembic import command

    ran: list[str] = []
    config = migrator._config(url)
    config.attributes["replaceable_directory"] = directory
    config.attributes["on_replaceables"] = ran.extend
    command.upgrade(config, "head")
    return ran


def test_a_changed_function_file_is_applied_by_the_next_migrate_and_only_it(new_database, tmp_path):
    """Changing the merge rule is an edit of its one file: `migrate` makes it again, and nothing else."""
    url = new_database()
    migrator.migrate(url)
    files = tmp_path / "replaceable"
    files.mkdir()
    for file in replaceable.shipped():
        (files / file.path.name).write_text(file.sql, encoding="utf-8")
    assert migrate_with(url, files) == []  # as schema.sql built it: nothing to do
    merge = files / "22_merge_recipient.sql"
    merge.write_text(merge.read_text().replace("DECLARE\n", "DECLARE\n    -- changed: one\n", 1))
    assert migrate_with(url, files) == ["22_merge_recipient"]
    with psycopg.connect(url) as conn:
        body = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'merge_recipient'").fetchone()
        assert body is not None and "-- changed: one" in body[0]
        recorded = dict(conn.execute("SELECT name, checksum FROM schema_replaceables").fetchall())
    assert recorded["22_merge_recipient"] == replaceable.Replaceable(merge).checksum
    assert migrate_with(url, files) == []


def test_a_replaceable_function_an_index_uses_is_refused_and_nothing_changes(new_database, tmp_path):
    """An index on report_day() would keep the old body's answers: such a change takes a migration
    that rebuilds the index. The migrate fails whole, naming the index."""
    url = new_database()
    migrator.migrate(url)
    files = tmp_path / "replaceable"
    files.mkdir()
    (files / "09_report_day.sql").write_text(
        "CREATE OR REPLACE FUNCTION report_day(t timestamptz) RETURNS date\n"
        "    LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN (t AT TIME ZONE 'UTC')::date;\n")
    (files / "99_delivery_rate.sql").write_text("CREATE OR REPLACE VIEW delivery_rate AS SELECT 1 AS one;\n")
    with pytest.raises(Fatal, match=re.escape("report_day() is used by recipients_report_day_idx")):
        migrate_with(url, files)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT report_day('2026-03-05T13:30:00Z')").fetchone() == (date(2026, 3, 6),)
        assert conn.execute("SELECT to_regclass('delivery_rate')").fetchone() == (None,)


def test_a_database_missing_a_replaceable_is_behind_until_migrated(new_database):
    """Code that calls a function the database never made waits for `migrate` (a changed body is
    served: it keeps the contract)."""
    url = new_database()
    migrator.migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_replaceables WHERE name = '25_apply_reply'")
        conn.execute("UPDATE schema_replaceables SET checksum = 'older' WHERE name = '24_apply_result'")
        assert "lacks 25_apply_reply" in (migrator.behind(conn) or "")
        assert migrator.migrate(url) == [
            "migrations/replaceable/ (changed since the last migrate): 24_apply_result, 25_apply_reply"]
        assert migrator.behind(conn) is None
