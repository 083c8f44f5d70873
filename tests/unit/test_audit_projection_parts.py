"""The pure parts of ``projections.audit``: balances judged against the replay, balances
taken back to a cut-off, and the rebuild's differences turned into located findings."""

from __future__ import annotations

import uuid

from ledger.audit import Balances, Check
from ledger.envelope import Posting, PostingSide
from projections.audit import (
    LiveBalances,
    Source,
    Sums,
    judge_balances,
    keyed_ids,
    projection_findings,
    replayed_sums,
    take_back,
)
from projections.rebuild import Comparison, Cutoff, Finding, Kind, TableCount

TOPIC = "t.payment-events"
PAYABLE = ("merchant_payable:mer_1", "EUR")
CLEARING = ("provider_clearing:stripe", "EUR")
FEES = ("merchant_fees:mer_1", "EUR")


def live(
    entries: dict[tuple[str, str], Sums],
    table: dict[tuple[str, str], Sums] | None = None,
    *,
    taken_back: bool = False,
) -> LiveBalances:
    return LiveBalances(
        "projections", {0: 4}, entries, entries if table is None else table, taken_back
    )


def test_replayed_balances_become_sums_per_account_and_currency() -> None:
    balances = Balances()
    balances.apply(
        [
            Posting(CLEARING[0], PostingSide.DEBIT, 1000, "EUR"),
            Posting(PAYABLE[0], PostingSide.CREDIT, 1000, "EUR"),
            Posting(PAYABLE[0], PostingSide.DEBIT, 300, "EUR"),
        ]
    )
    assert replayed_sums(balances) == {CLEARING: Sums(1000, 0), PAYABLE: Sums(300, 1000)}


def test_agreeing_balances_pass_one_check_per_account() -> None:
    replayed = {CLEARING: Sums(1000, 0), PAYABLE: Sums(0, 1000)}
    report = judge_balances(
        TOPIC, replayed, live({CLEARING: Sums(1000, 0, 1), PAYABLE: Sums(0, 1000, 1)})
    )
    assert report.findings == []
    assert report.checked[Check.BALANCES] == 2
    assert report.failed[Check.BALANCES] == 0
    assert report.facts == {"balances_compared": 2, "balances_table": "as stored"}
    assert report.exit_code == 0


def test_each_live_source_that_disagrees_is_a_finding_naming_its_row() -> None:
    replayed = {CLEARING: Sums(1000, 0), PAYABLE: Sums(0, 1000), FEES: Sums(59, 0)}
    entries = {
        CLEARING: Sums(1000, 0, 1),
        PAYABLE: Sums(0, 1000, 1),
        ("extra:x", "USD"): Sums(5, 0, 1),
    }
    # The table's clearing row was altered; its entries were not.
    table = {**entries, CLEARING: Sums(1001, 0, 1)}

    report = judge_balances(TOPIC, replayed, live(entries, table, taken_back=True))

    found = [(f.where, f.reason, f.detail) for f in report.findings]
    assert found == [
        (
            "projections.account_balances account=extra:x currency=USD",
            "missing-replayed",
            "debit 5 credit 0 live vs no posting replayed",
        ),
        (
            "projections.ledger_entries account=extra:x currency=USD",
            "missing-replayed",
            "debit 5 credit 0 live vs no posting replayed",
        ),
        (
            "projections.account_balances account=merchant_fees:mer_1 currency=EUR",
            "missing-live",
            "no live row vs debit 59 credit 0 replayed",
        ),
        (
            "projections.ledger_entries account=merchant_fees:mer_1 currency=EUR",
            "missing-live",
            "no live row vs debit 59 credit 0 replayed",
        ),
        (
            "projections.account_balances account=provider_clearing:stripe currency=EUR",
            "differs",
            "debit 1001 credit 0 live vs debit 1000 credit 0 replayed",
        ),
    ]
    assert {(f.topic, f.partition, f.offset, f.event_id, f.check) for f in report.findings} == {
        (TOPIC, -1, -1, None, Check.BALANCES)
    }
    assert report.checked[Check.BALANCES] == 5 + 1  # the payable account passed
    assert report.failed[Check.BALANCES] == 5
    assert report.facts["balances_table"] == "taken back to the cut-off"
    assert report.exit_code == 1


def test_an_entries_count_that_is_not_the_number_of_entries_differs() -> None:
    replayed = {CLEARING: Sums(1000, 0)}
    report = judge_balances(
        TOPIC, replayed, live({CLEARING: Sums(1000, 0, 1)}, {CLEARING: Sums(1000, 0, 2)})
    )
    assert [(f.where, f.reason, f.detail) for f in report.findings] == [
        (
            "projections.account_balances account=provider_clearing:stripe currency=EUR",
            "differs",
            "entries_count 2 vs 1 ledger entries",
        )
    ]


def test_the_table_is_taken_back_to_the_cutoff_by_the_entries_beyond_it() -> None:
    table = {CLEARING: Sums(1500, 0, 3), PAYABLE: Sums(0, 1500, 2), FEES: Sums(59, 0, 1)}
    beyond = {CLEARING: Sums(500, 0, 1), FEES: Sums(59, 0, 1), ("gone:x", "EUR"): Sums(1, 0, 1)}
    assert take_back(table, beyond) == {
        CLEARING: Sums(1000, 0, 2),
        PAYABLE: Sums(0, 1500, 2),
        # FEES came back to nothing: it did not exist at the cut-off.
    }
    # A row the table lacks stays absent; one smaller than its entries beyond the
    # cut-off (altered by hand) comes back negative, and then differs from the replay.
    assert take_back({}, {CLEARING: Sums(5, 0, 1)}) == {}
    assert take_back({CLEARING: Sums(4, 0, 1)}, {CLEARING: Sums(5, 0, 1)}) == {
        CLEARING: Sums(-1, 0, 0)
    }


def comparison(*findings: Finding, tables: tuple[TableCount, ...] = ()) -> Comparison:
    return Comparison(Cutoff(TOPIC, {0: 4}, {0: 4}), tables, findings)


def test_rebuild_differences_become_findings_with_their_rows_and_records() -> None:
    event = uuid.uuid4()
    orphan = uuid.uuid4()
    differences = (
        Finding(
            "payments", {"payment_id": "pay_1"}, "status", "REFUNDED", "SUCCEEDED", Kind.DIFFERENT
        ),
        Finding("payment_events", {"event_id": event}, "note", "x", None, Kind.DIFFERENT),
        Finding(
            "ledger_entries",
            {"event_id": orphan, "leg": 1},
            None,
            None,
            {"leg": 1},
            Kind.MISSING_IN_LIVE,
        ),
        Finding(
            "processed_events",
            {"event_id": orphan},
            None,
            {"event_id": orphan, "source_topic": TOPIC, "source_partition": 2, "source_offset": 9},
            None,
            Kind.MISSING_IN_REBUILD,
        ),
        Finding(
            "account_balances",
            {"account": CLEARING[0], "currency": "EUR"},
            "debit_minor",
            1001,
            1000,
            Kind.DIFFERENT,
        ),
        Finding(
            "consumer_positions",
            {"topic": TOPIC, "partition": 3},
            "next_offset",
            1,
            2,
            Kind.DIFFERENT,
        ),
        Finding("extra", {}, None, None, "table", Kind.MISSING_IN_LIVE),
    )
    tables = (
        TableCount("payments", 3, 0, 1),
        TableCount("payment_events", 10, 2, 1),
        TableCount("account_balances", 4, 0, 1),
    )
    events = {str(event): Source(TOPIC, 0, 3, str(event))}
    payments = {"pay_1": Source(TOPIC, 1, 7, "ev-newest")}

    report = projection_findings(comparison(*differences, tables=tables), "live", events, payments)

    located = [
        (f.topic, f.partition, f.offset, f.event_id, f.reason, f.where, f.detail)
        for f in report.findings
    ]
    assert located == [
        (
            TOPIC,
            1,
            7,
            "ev-newest",
            "different",
            "live.payments payment_id=pay_1",
            'status: live "REFUNDED" vs rebuilt "SUCCEEDED"',
        ),
        (
            TOPIC,
            0,
            3,
            str(event),
            "different",
            f"live.payment_events event_id={event}",
            'note: live "x" vs rebuilt null',
        ),
        (
            "",
            -1,
            -1,
            str(orphan),
            "missing-in-live",
            f"live.ledger_entries event_id={orphan} leg=1",
            'row only in the rebuilt schema: {"leg": 1}',
        ),
        (
            TOPIC,
            2,
            9,
            str(orphan),
            "missing-in-rebuild",
            f"live.processed_events event_id={orphan}",
            "row only in the live schema: "
            f'{{"event_id": "{orphan}", "source_offset": 9, "source_partition": 2,'
            f' "source_topic": "{TOPIC}"}}',
        ),
        (
            "",
            -1,
            -1,
            None,
            "different",
            f"live.account_balances account={CLEARING[0]} currency=EUR",
            "debit_minor: live 1001 vs rebuilt 1000",
        ),
        (
            TOPIC,
            3,
            -1,
            None,
            "different",
            f"live.consumer_positions topic={TOPIC} partition=3",
            "next_offset: live 1 vs rebuilt 2",
        ),
        (
            "",
            -1,
            -1,
            None,
            "missing-in-live",
            "live.extra",
            'table only in the rebuilt schema: "table"',
        ),
    ]
    assert all(f.check is Check.PROJECTION for f in report.findings)
    # Rows compared with no difference pass: 2 + 9 + 3.
    assert report.checked[Check.PROJECTION] == 14 + len(differences)
    assert report.failed[Check.PROJECTION] == len(differences)
    assert report.facts["projection_rows_compared"] == 17
    assert report.facts["projection_rows_beyond_cutoff"] == 2
    assert report.facts["projection_rows_compared.payment_events"] == 10
    assert keyed_ids(comparison(*differences), "event_id") == sorted({str(event), str(orphan)})
    assert keyed_ids(comparison(*differences), "payment_id") == ["pay_1"]


def test_an_equal_rebuild_is_no_finding() -> None:
    report = projection_findings(
        comparison(tables=(TableCount("payments", 3, 1, 0),)), "live", {}, {}
    )
    assert report.ok
    assert report.checked[Check.PROJECTION] == 3
