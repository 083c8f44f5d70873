"""The rebuild's comparison, over rows in memory: pairing by key, the cut-off rules per
table, the findings and what the command prints. No Kafka, no Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ledger.cli import main
from ledger.config import Settings
from ledger.envelope import AuditFact, new_envelope
from ledger.keystore import KeyStore
from projections import commands, rebuild
from projections.applier import Totals
from projections.rebuild import (
    Comparison,
    Cutoff,
    Finding,
    Kind,
    RebuildError,
    Replayed,
    Report,
    Shape,
    Side,
    compare,
    pair_rows,
)

TOPIC = "t.payment-events"
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EVENT_COLUMNS = (
    "event_id",
    "payment_id",
    "note",
    "source_topic",
    "source_partition",
    "source_offset",
)
SHAPES = {
    "payment_events": Shape(EVENT_COLUMNS, ("event_id",)),
    "processed_events": Shape(
        ("event_id", "source_topic", "source_partition", "source_offset", "applied_at"),
        ("event_id",),
    ),
    "ledger_entries": Shape(
        ("event_id", "leg", "account", "side", "amount_minor", "currency"), ("event_id", "leg")
    ),
    "payments": Shape(("payment_id", "status", "captured_minor", "updated_at"), ("payment_id",)),
    "payment_fees": Shape(("payment_id", "currency", "amount_minor"), ("payment_id", "currency")),
    "account_balances": Shape(
        ("account", "currency", "debit_minor", "credit_minor", "balance_minor", "entries_count"),
        ("account", "currency"),
    ),
    "consumer_positions": Shape(
        ("topic", "partition", "next_offset", "updated_at"), ("topic", "partition")
    ),
    "schema_migrations": Shape(("version", "name", "checksum", "applied_at"), ("version",)),
}


Tables = dict[str, list[dict[str, Any]]]


def source(rows: Mapping[Side, Tables]):
    """A row source over dicts: each side's rows sorted by key, only the asked columns."""

    def rows_of(side: Side, table: str, columns: Sequence[str], key: Sequence[str]):
        found = sorted(rows[side].get(table, []), key=lambda row: tuple(row[k] for k in key))
        return [{name: row[name] for name in columns} for row in found]

    return rows_of


def run(
    live: Tables,
    rebuilt: Tables,
    *,
    ends: Mapping[int, int],
    live_positions: Mapping[int, int],
    shapes: Mapping[str, Shape] = SHAPES,
    rebuilt_shapes: Mapping[str, Shape] | None = None,
) -> Comparison:
    return compare(
        shapes,
        shapes if rebuilt_shapes is None else rebuilt_shapes,
        source({Side.LIVE: live, Side.REBUILT: rebuilt}),
        Cutoff(TOPIC, ends, live_positions),
    )


def counts(comparison: Comparison) -> dict[str, tuple[int, int, int]]:
    return {c.table: (c.compared, c.beyond, c.differences) for c in comparison.tables}


def event(event_id: str, payment: str, offset: int, partition: int = 0, **more: Any):
    return {
        "event_id": event_id,
        "payment_id": payment,
        "note": None,
        "source_topic": TOPIC,
        "source_partition": partition,
        "source_offset": offset,
        **more,
    }


def processed(event_id: str, offset: int, partition: int = 0, applied_at: datetime = T0):
    return {
        "event_id": event_id,
        "source_topic": TOPIC,
        "source_partition": partition,
        "source_offset": offset,
        "applied_at": applied_at,
    }


def entry(event_id: str, leg: int, account: str, side: str, amount: int):
    return {
        "event_id": event_id,
        "leg": leg,
        "account": account,
        "side": side,
        "amount_minor": amount,
        "currency": "EUR",
    }


def balance(account: str, debit: int, credit: int, entries: int):
    return {
        "account": account,
        "currency": "EUR",
        "debit_minor": debit,
        "credit_minor": credit,
        "balance_minor": debit - credit,
        "entries_count": entries,
    }


def payment(payment_id: str, status: str, captured: int, updated_at: datetime = T0):
    return {
        "payment_id": payment_id,
        "status": status,
        "captured_minor": captured,
        "updated_at": updated_at,
    }


def position(partition: int, next_offset: int, topic: str = TOPIC, updated_at: datetime = T0):
    return {
        "topic": topic,
        "partition": partition,
        "next_offset": next_offset,
        "updated_at": updated_at,
    }


CLEARING, PAYABLE = "provider:stripe:clearing", "merchant:mer_1:payable"


def log_tables(upto: int) -> Tables:
    """What an applier makes of this log (partition 0), read up to offset ``upto``."""
    log = [
        ("e0", "pay_a", "AWAITING_PAYMENT_METHOD", 0, []),
        ("e1", "pay_a", "SUCCEEDED", 1000, [(CLEARING, "DEBIT", 1000), (PAYABLE, "CREDIT", 1000)]),
        ("e2", "pay_b", "AWAITING_PAYMENT_METHOD", 0, []),
        ("e3", "pay_b", "SUCCEEDED", 500, [(CLEARING, "DEBIT", 500), (PAYABLE, "CREDIT", 500)]),
        (
            "e4",
            "pay_a",
            "PARTIALLY_REFUNDED",
            1000,
            [(PAYABLE, "DEBIT", 200), (CLEARING, "CREDIT", 200)],
        ),
    ][:upto]
    sums: dict[str, list[int]] = {}
    payments: dict[str, dict[str, Any]] = {}
    for _, payment_id, status, captured, legs in log:
        payments[payment_id] = payment(payment_id, status, captured)
        for account, side, amount in legs:
            found = sums.setdefault(account, [0, 0, 0])
            found[0 if side == "DEBIT" else 1] += amount
            found[2] += 1
    return {
        "payment_events": [event(e[0], e[1], offset) for offset, e in enumerate(log)],
        "processed_events": [processed(e[0], offset) for offset, e in enumerate(log)],
        "ledger_entries": [
            entry(e[0], leg, account, side, amount)
            for e in log
            for leg, (account, side, amount) in enumerate(e[4])
        ],
        "payments": list(payments.values()),
        "payment_fees": [],
        "account_balances": [balance(a, d, c, n) for a, (d, c, n) in sums.items()],
        "consumer_positions": [position(0, upto)] if upto else [],
        "schema_migrations": [
            {"version": 1, "name": "001_projections.sql", "checksum": "c1", "applied_at": T0}
        ],
    }


# Pairing rows by key --------------------------------------------------------------


def test_rows_are_paired_by_key_whatever_each_side_lacks() -> None:
    live = [{"k": 1}, {"k": 2}, {"k": 4}]
    rebuilt = [{"k": 2}, {"k": 3}, {"k": 4}, {"k": 5}]
    assert list(pair_rows(live, rebuilt, ["k"])) == [
        ({"k": 1}, None),
        ({"k": 2}, {"k": 2}),
        (None, {"k": 3}),
        ({"k": 4}, {"k": 4}),
        (None, {"k": 5}),
    ]
    assert list(pair_rows([], [], ["k"])) == []


def test_rows_are_paired_on_every_key_column() -> None:
    live = [{"a": "x", "b": 1}, {"a": "x", "b": 2}, {"a": "y", "b": 1}]
    rebuilt = [{"a": "x", "b": 2}, {"a": "y", "b": 0}, {"a": "y", "b": 1}]
    assert [
        (left is not None, right is not None)
        for left, right in pair_rows(live, rebuilt, ["a", "b"])
    ] == [
        (True, False),
        (True, True),
        (False, True),
        (True, True),
    ]


def test_rows_out_of_key_order_are_refused_rather_than_paired_wrongly() -> None:
    with pytest.raises(RebuildError, match="not in ascending order of k"):
        list(pair_rows([{"k": "b"}, {"k": "a"}], [], ["k"]))
    with pytest.raises(RebuildError, match="rebuilt rows"):
        list(pair_rows([], [{"k": 2}, {"k": 1}], ["k"]))


def test_the_cutoff_is_the_lower_of_the_end_offsets_and_the_live_positions() -> None:
    cutoff = Cutoff(TOPIC, {0: 10, 1: 5, 2: 0}, {0: 12, 1: 3})
    assert [cutoff.cut(p) for p in (0, 1, 2, 3)] == [10, 3, 0, 0]
    assert cutoff.covers(TOPIC, 0, 9)
    assert not cutoff.covers(TOPIC, 0, 10)
    assert not cutoff.covers(TOPIC, 1, 3)
    assert not cutoff.covers(TOPIC, 3, 0)  # a partition the rebuild never read
    assert cutoff.covers("other.topic", 0, 1_000)  # never rebuilt: always compared


# Whole schemas ----------------------------------------------------------------------


def test_identical_schemas_have_no_findings_and_every_row_is_counted() -> None:
    tables = log_tables(5)
    comparison = run(tables, log_tables(5), ends={0: 5}, live_positions={0: 5})
    assert comparison.findings == ()
    assert counts(comparison) == {
        "consumer_positions": (1, 0, 0),
        "schema_migrations": (1, 0, 0),
        "payment_events": (5, 0, 0),
        "processed_events": (5, 0, 0),
        "ledger_entries": (6, 0, 0),
        "payments": (2, 0, 0),
        "payment_fees": (0, 0, 0),
        "account_balances": (2, 0, 0),
    }


def test_a_changed_column_is_named_with_every_key_column() -> None:
    live = log_tables(5)
    live["ledger_entries"][1]["amount_minor"] = 999
    live["payments"][0]["status"] = "REFUNDED"
    comparison = run(live, log_tables(5), ends={0: 5}, live_positions={0: 5})
    assert comparison.findings == (
        Finding(
            "ledger_entries",
            {"event_id": "e1", "leg": 1},
            "amount_minor",
            999,
            1000,
            Kind.DIFFERENT,
        ),
        Finding(
            "payments",
            {"payment_id": "pay_a"},
            "status",
            "REFUNDED",
            "PARTIALLY_REFUNDED",
            Kind.DIFFERENT,
        ),
    )
    assert counts(comparison)["payments"] == (2, 0, 1)


def test_rows_missing_on_either_side_carry_the_row_they_lack() -> None:
    live = log_tables(5)
    deleted = live["account_balances"].pop(0)
    live["payment_fees"].append({"payment_id": "pay_a", "currency": "USD", "amount_minor": 7})
    comparison = run(live, log_tables(5), ends={0: 5}, live_positions={0: 5})
    assert comparison.findings == (
        Finding(
            "payment_fees",
            {"payment_id": "pay_a", "currency": "USD"},
            None,
            {"payment_id": "pay_a", "currency": "USD", "amount_minor": 7},
            None,
            Kind.MISSING_IN_REBUILD,
        ),
        Finding(
            "account_balances",
            {"account": deleted["account"], "currency": "EUR"},
            None,
            None,
            deleted,
            Kind.MISSING_IN_LIVE,
        ),
    )


def test_when_the_projection_ran_is_never_compared_what_the_log_says_always_is() -> None:
    live = log_tables(5)
    later = datetime(2027, 1, 1, tzinfo=UTC)
    for row in live["processed_events"]:
        row["applied_at"] = later
    live["consumer_positions"][0]["updated_at"] = later
    live["schema_migrations"][0]["applied_at"] = later
    assert run(live, log_tables(5), ends={0: 5}, live_positions={0: 5}).findings == ()
    # payments.updated_at is the recorded_at of the newest event: from the log.
    live["payments"][1]["updated_at"] = later
    (finding,) = run(live, log_tables(5), ends={0: 5}, live_positions={0: 5}).findings
    assert (finding.table, finding.column, finding.live_value) == ("payments", "updated_at", later)


def test_a_live_schema_ahead_is_compared_up_to_the_cut_off() -> None:
    # The rebuild ended at offset 4; the live schema applied the refund at offset 4 too.
    comparison = run(log_tables(5), log_tables(4), ends={0: 4}, live_positions={0: 5})
    assert comparison.findings == ()
    assert counts(comparison) == {
        "consumer_positions": (1, 0, 0),  # live at 5, rebuilt at 4: ahead, as it should be
        "schema_migrations": (1, 0, 0),
        "payment_events": (4, 1, 0),
        "processed_events": (4, 1, 0),
        "ledger_entries": (4, 2, 0),
        "payments": (1, 1, 0),  # pay_a moved past the cut-off: not compared
        "payment_fees": (0, 0, 0),
        "account_balances": (2, 0, 0),  # taken back to the cut-off: compared
    }


def test_rows_changed_by_hand_are_found_even_with_the_live_schema_ahead() -> None:
    live = log_tables(5)
    live["payments"][1]["captured_minor"] = 400  # pay_b: nothing of it past the cut-off
    live["account_balances"][0]["debit_minor"] += 1  # a busy account, moved past the cut-off
    live["account_balances"][0]["balance_minor"] += 1
    comparison = run(live, log_tables(4), ends={0: 4}, live_positions={0: 5})
    account = live["account_balances"][0]["account"]
    rebuilt_balance = {b["account"]: b for b in log_tables(4)["account_balances"]}[account]
    assert comparison.findings == (
        Finding("payments", {"payment_id": "pay_b"}, "captured_minor", 400, 500, Kind.DIFFERENT),
        Finding(
            "account_balances",
            {"account": account, "currency": "EUR"},
            "debit_minor",
            rebuilt_balance["debit_minor"] + 1,
            rebuilt_balance["debit_minor"],
            Kind.DIFFERENT,
        ),
        Finding(
            "account_balances",
            {"account": account, "currency": "EUR"},
            "balance_minor",
            rebuilt_balance["balance_minor"] + 1,
            rebuilt_balance["balance_minor"],
            Kind.DIFFERENT,
        ),
    )


def test_an_account_only_moved_past_the_cut_off_did_not_exist_then() -> None:
    live = log_tables(5)
    live["payment_events"].append(event("e5", "pay_b", 5))
    live["ledger_entries"] += [
        entry("e5", 0, "merchant:mer_1:fees", "DEBIT", 30),
        entry("e5", 1, PAYABLE, "CREDIT", 30),
    ]
    live["account_balances"].append(balance("merchant:mer_1:fees", 30, 0, 1))
    live["account_balances"][1]["credit_minor"] += 30
    live["account_balances"][1]["balance_minor"] -= 30
    live["account_balances"][1]["entries_count"] += 1
    comparison = run(live, log_tables(5), ends={0: 5}, live_positions={0: 6})
    assert comparison.findings == ()
    assert counts(comparison)["account_balances"] == (2, 1, 0)
    assert counts(comparison)["payments"] == (1, 1, 0)  # pay_b moved on


def test_a_live_schema_behind_is_one_difference_on_its_position() -> None:
    comparison = run(log_tables(3), log_tables(5), ends={0: 5}, live_positions={0: 3})
    assert comparison.findings == (
        Finding(
            "consumer_positions",
            {"topic": TOPIC, "partition": 0},
            "next_offset",
            3,
            5,
            Kind.DIFFERENT,
        ),
    )
    assert counts(comparison)["payment_events"] == (3, 2, 0)
    assert counts(comparison)["payments"] == (0, 2, 0)  # both moved past the live schema


def test_positions_on_partitions_the_rebuild_read_nothing_of() -> None:
    live = log_tables(5)
    live["consumer_positions"] += [position(1, 9), position(2, 2), position(0, 3, "other.topic")]
    comparison = run(live, log_tables(5), ends={0: 5, 1: 8, 2: 8}, live_positions={0: 5, 1: 9})
    # Partition 1: the live schema read past the end offsets: ahead, not compared.
    # Partition 2: it claims records below them that the rebuild never saw. Another
    # topic's position: the rebuild has none.
    assert comparison.findings == (
        Finding(
            "consumer_positions",
            {"topic": "other.topic", "partition": 0},
            None,
            {"topic": "other.topic", "partition": 0, "next_offset": 3},
            None,
            Kind.MISSING_IN_REBUILD,
        ),
        Finding(
            "consumer_positions",
            {"topic": TOPIC, "partition": 2},
            None,
            {"topic": TOPIC, "partition": 2, "next_offset": 2},
            None,
            Kind.MISSING_IN_REBUILD,
        ),
    )


def test_rows_from_records_of_another_topic_are_always_compared() -> None:
    live = log_tables(5)
    live["processed_events"].append(
        {**processed("x1", 0), "source_topic": "elsewhere.payment-events"}
    )
    (finding,) = run(live, log_tables(5), ends={0: 5}, live_positions={0: 5}).findings
    assert (finding.table, finding.key, finding.kind) == (
        "processed_events",
        {"event_id": "x1"},
        Kind.MISSING_IN_REBUILD,
    )


def test_tables_and_columns_only_one_schema_has_are_differences() -> None:
    live_shapes = {**SHAPES, "by_hand": Shape(("id",), ("id",))}
    rebuilt_shapes = {
        **SHAPES,
        "payments": Shape(
            ("payment_id", "status", "captured_minor", "updated_at", "added"), ("payment_id",)
        ),
        "payment_fees": Shape(("payment_id", "currency", "amount_minor"), ("payment_id",)),
    }
    live = {**log_tables(2), "by_hand": [{"id": 1}]}
    rebuilt = log_tables(2)
    for row in rebuilt["payments"]:
        row["added"] = 1
    comparison = run(
        live,
        rebuilt,
        ends={0: 2},
        live_positions={0: 2},
        shapes=live_shapes,
        rebuilt_shapes=rebuilt_shapes,
    )
    assert comparison.findings == (
        Finding("payments", {}, "added", None, "column", Kind.MISSING_IN_LIVE),
        Finding(
            "payment_fees",
            {},
            None,
            ["payment_id", "currency"],
            ["payment_id"],
            Kind.DIFFERENT,
        ),
        Finding("by_hand", {}, None, "table", None, Kind.MISSING_IN_REBUILD),
    )
    assert "payments" in counts(comparison)  # compared on the columns both have
    assert "payment_fees" not in counts(comparison)


def test_a_table_without_a_primary_key_is_keyed_by_all_its_columns() -> None:
    shapes = {"notes": Shape(("a", "b"), ())}
    comparison = compare(
        shapes,
        shapes,
        source(
            {
                Side.LIVE: {"notes": [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}]},
                Side.REBUILT: {"notes": [{"a": 1, "b": "x"}]},
            }
        ),
        Cutoff(TOPIC, {}, {}),
    )
    assert [(f.key, f.kind) for f in comparison.findings] == [
        ({"a": 1, "b": "y"}, Kind.MISSING_IN_REBUILD)
    ]


def test_a_rule_missing_the_columns_it_reads_is_an_error() -> None:
    shapes = {**SHAPES, "payment_events": Shape(("event_id", "payment_id"), ("event_id",))}
    with pytest.raises(RebuildError, match="payment_events lacks source_offset"):
        run(log_tables(1), log_tables(1), ends={0: 1}, live_positions={0: 1}, shapes=shapes)


# What is printed ---------------------------------------------------------------------


def report(findings: Iterable[Finding] = ()) -> Report:
    comparison = run(log_tables(5), log_tables(5), ends={0: 5, 1: 0}, live_positions={0: 5})
    return Report(
        schema="scratch",
        live="projections",
        topic=TOPIC,
        ends={0: 5, 1: 0},
        dropped=False,
        replayed=Replayed(Totals(batches=1, applied=5), withheld=2, positions={0: 5}),
        comparison=Comparison(comparison.cutoff, comparison.tables, tuple(findings)),
    )


def test_findings_as_json() -> None:
    event_id = uuid.uuid4()
    finding = Finding(
        "processed_events",
        {"event_id": event_id},
        None,
        None,
        {"record_sha256": b"\x01\xff", "applied_at": T0, "source_offset": 3},
        Kind.MISSING_IN_LIVE,
    )
    assert json.loads(json.dumps(finding.to_json())) == {
        "table": "processed_events",
        "key": {"event_id": str(event_id)},
        "column": None,
        "live_value": None,
        "rebuilt_value": {
            "record_sha256": "01ff",
            "applied_at": "2026-11-23T12:00:00+00:00",
            "source_offset": 3,
        },
        "kind": "missing-in-live",
    }


def test_the_json_report() -> None:
    finding = Finding("payments", {"payment_id": "pay_a"}, "status", "X", "Y", Kind.DIFFERENT)
    found = json.loads(json.dumps(rebuild.report_json(report([finding]))))
    assert found["end_offsets"] == {"0": 5, "1": 0}
    assert found["cutoff"] == {"0": 5, "1": 0}
    assert found["replay"] == {
        "applied": 5,
        "duplicates": 0,
        "conflicts": 0,
        "rejected": 0,
        "withheld": 2,
        "positions": {"0": 5},
    }
    assert found["differences"] == 1
    assert found["findings"] == [
        {
            "table": "payments",
            "key": {"payment_id": "pay_a"},
            "column": "status",
            "live_value": "X",
            "rebuilt_value": "Y",
            "kind": "different",
        }
    ]
    assert {t["table"]: t["rows_compared"] for t in found["tables"]}["payment_events"] == 5


def test_the_summary() -> None:
    text = rebuild.report_text(report())
    assert "5 events applied, 0 duplicates, 0 conflicts, 0 rejected;" in text
    assert "2 audit facts and dead letters not published again" in text
    assert "compared with live schema projections (at 0:5) below 0:5 1:0:" in text
    assert text.splitlines()[-1] == "no differences"
    rows = {
        line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  ")
    }
    assert rows["ledger_entries"] == ["6", "0", "0"]

    findings = [
        Finding("payments", {"payment_id": f"pay_{n}"}, "status", "X", "Y", Kind.DIFFERENT)
        for n in range(rebuild.SUMMARY_FINDINGS_MAX + 2)
    ]
    text = rebuild.report_text(report(findings))
    assert f"{len(findings)} differences:" in text
    assert '  different: payments (payment_id="pay_0") status: live "X", rebuilt "Y"' in text
    assert text.splitlines()[-1] == "  ... and 2 more (--json lists all)"


# The publisher of a rebuild ----------------------------------------------------------


def test_the_rebuilds_publisher_counts_what_it_is_given_and_sends_nothing(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    withheld = rebuild.Withheld(settings, None, KeyStore(settings))  # type: ignore[arg-type]
    fact = new_envelope(
        event_type="audit.test",
        aggregate_id="pay_1",
        sequence=1,
        producer="/payledger/projections",
        payload=AuditFact(fact_type="test", actor="test", subject="pay_1"),
    )

    async def use() -> None:
        await withheld.start()  # no producer, no key endorsement
        published = await withheld.publish("t.audit-facts", fact)
        assert published.offset == -1
        await withheld.stop()

    asyncio.run(use())
    assert withheld.envelopes == [("t.audit-facts", fact)]
    assert not (tmp_path / "keys").exists()  # no signing key was even looked for


# The command -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--schema", "Bad-Name"], "not a projections schema name"),
        (["--schema", "scratch", "--live", "pg_catalog"], "not a projections schema name"),
        (["--schema", "projections"], "is the live schema"),
        (["--schema", "scratch", "--live", "scratch", "--replace"], "is the live schema"),
        (["--schema", "projections", "--live", "other"], "the one the ingress reads"),
    ],
)
def test_the_command_refuses_bad_names_before_touching_anything(args, message) -> None:
    result = CliRunner().invoke(main, ["projections", "rebuild", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_commands_defaults_are_the_rebuilds() -> None:
    options = {param.name: param for param in commands.rebuild.params}
    assert options["live"].default is None, "the live schema defaults to the configured one"
    assert options["live_wait"].default == rebuild.LIVE_WAIT_S_DEFAULT
    assert options["live_wait"].type.max == rebuild.LIVE_WAIT_S_MAX
    assert options["schema"].required
