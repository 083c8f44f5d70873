"""The card-data guard: published test card numbers, near misses and bounded work."""

from __future__ import annotations

import pytest

from ledger import carddata
from ledger.carddata import contains_pan, luhn_valid, pan_paths

# The networks' (and Stripe's / Adyen's) published test numbers.
TEST_PANS = {
    "visa": "4111111111111111",
    "visa-2": "4012888888881881",
    "visa-13": "4222222222222",
    "mastercard": "5555555555554444",
    "mastercard-2-series": "2223003122003222",
    "mastercard-3": "5105105105105100",
    "amex": "378282246310005",
    "amex-2": "371449635398431",
    "discover": "6011111111111117",
    "discover-2": "6011000990139424",
    "diners-14": "30569309025904",
    "jcb": "3530111333300000",
    "unionpay-19": "6205500000000000004",
}


def with_check_digit(body: str) -> str:
    """``body`` plus the digit that makes the whole pass Luhn."""
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable")


def grouped(pan: str, separator: str, size: int = 4) -> str:
    return separator.join(pan[i : i + size] for i in range(0, len(pan), size))


def test_the_luhn_check_itself() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert with_check_digit("411111111111111") == "4111111111111111"


@pytest.mark.parametrize("pan", TEST_PANS.values(), ids=TEST_PANS.keys())
def test_published_test_numbers_are_found_in_every_accepted_form(pan: str) -> None:
    assert luhn_valid(pan)
    assert contains_pan(pan)
    assert contains_pan(grouped(pan, " "))
    assert contains_pan(grouped(pan, "-"))
    assert contains_pan(f"card {pan} exp 12/29")
    assert contains_pan(f"card {grouped(pan, ' ')}, exp 12/29")
    assert contains_pan(f"ref:{pan}.")


def test_amex_grouping_and_mixed_single_separators() -> None:
    assert contains_pan("3782 822463 10005")
    assert contains_pan("4111 1111-1111 1111")


@pytest.mark.parametrize("pan", TEST_PANS.values(), ids=TEST_PANS.keys())
def test_luhn_failing_numbers_are_not_flagged(pan: str) -> None:
    broken = pan[:-1] + str((int(pan[-1]) + 1) % 10)
    assert not luhn_valid(broken)
    assert not contains_pan(broken)
    assert not contains_pan(f"card {broken} exp 12/29")
    if len(broken) <= 16:
        # Grouped in fours, a 16-digit number has no shorter candidate inside
        # (12 digits is too short); a 19-digit one does (its first 16 digits).
        assert not contains_pan(grouped(broken, " "))
        assert not contains_pan(f"card {grouped(broken, '-')} exp 12/29")


def test_a_luhn_valid_19_digit_number_is_the_longest_flagged() -> None:
    nineteen = with_check_digit("4" + "1" * 17)
    twenty = with_check_digit("4" + "1" * 18)
    assert len(nineteen) == 19 and contains_pan(nineteen)
    assert len(twenty) == 20 and luhn_valid(twenty)
    assert not contains_pan(twenty)


def test_a_luhn_valid_12_digit_number_is_not_flagged() -> None:
    twelve = with_check_digit("4" + "1" * 10)
    thirteen = with_check_digit("4" + "1" * 11)
    assert len(twelve) == 12 and not contains_pan(twelve)
    assert not contains_pan(grouped(twelve, " "))
    assert len(thirteen) == 13 and contains_pan(thirteen)


def test_a_card_number_inside_a_longer_digit_run_is_not_a_card_number() -> None:
    # One 20-digit run is one number; candidates start and end at group boundaries.
    assert not contains_pan("4111111111111111" + "0000")
    assert not contains_pan("9" + "4111111111111111" + "000")
    # ... but next to other numbers, joined or not, the card number is found.
    assert contains_pan("4111 1111 1111 1111 123")  # a CVV right after
    assert contains_pan("order 12 4111111111111111")
    assert contains_pan("4111111111111111 4111111111111111")


def test_numbers_starting_with_zero_are_not_card_numbers() -> None:
    padded = with_check_digit("0" * 10 + "12345")
    assert len(padded) == 16 and luhn_valid(padded)
    assert not contains_pan(padded)
    assert not contains_pan("0000000000000000")


@pytest.mark.parametrize(
    "text",
    [
        "4111.1111.1111.1111",
        "4111  1111  1111  1111",
        "4111/1111/1111/1111",
        "4111_1111_1111_1111",
        "4111\t1111\t1111\t1111",
        "4111 - 1111 - 1111 - 1111",
        "4111--1111--1111--1111",
    ],
)
def test_other_separators_do_not_join_groups(text: str) -> None:
    # Documented decision: only one space or one dash joins digit groups.
    assert not contains_pan(text)


def test_unicode_forms_are_normalised() -> None:
    full_width = "".join(chr(ord(c) - ord("0") + 0xFF10) for c in "4111111111111111")
    assert contains_pan(full_width)
    assert contains_pan("4111\u00a01111\u00a01111\u00a01111")


def test_ordinary_text_is_not_flagged() -> None:
    for text in (
        "",
        "Order 1234, 2 items, total 10.50 EUR",
        "call +1 415 555 0100",
        "2026-11-23T12:00:00Z",
        "no digits at all",
    ):
        assert not contains_pan(text)


class CountingTable(tuple[int, ...]):
    """The Luhn doubling table, counting how often the scanner reads it."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[override]
        CountingTable.reads += 1
        return super().__getitem__(index)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("text", "candidates_checked"),
    [
        ("4" * 65_536, False),  # one 64 KiB run: too long to be checked at all
        ("1 " * 32_768, True),  # 32 Ki one-digit groups, all joined: the most candidates
        ("1-" * 32_768, True),
        ("12-" * 21_845, True),
        ("1  " * 21_845, False),  # never joined
    ],
    ids=["64KiB-run", "spaced-digits", "dashed-digits", "two-digit-groups", "double-spaced"],
)
def test_work_is_linear_in_the_input(
    text: str, candidates_checked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A structural bound instead of a clock: every digit a candidate check
    # reads goes through the Luhn table, and no digit is read more than 19
    # times, however the input is shaped.
    CountingTable.reads = 0
    monkeypatch.setattr(carddata, "_DOUBLED", CountingTable(carddata._DOUBLED))
    assert not contains_pan(text)
    digits = sum(c.isdigit() for c in text)
    assert CountingTable.reads <= carddata.PAN_DIGITS_MAX * digits
    # The checker really went through the table, so the bound is not vacuous.
    assert (CountingTable.reads > digits) is candidates_checked


def test_pan_paths_name_the_places_never_the_number() -> None:
    document = {
        "amount": 1050,
        "metadata": {"note": "card 4111 1111 1111 1111 exp 12/29", "order": "1234"},
        "customer": {"name": "5555555555554444", "email": "a@example.com"},
        "items": [{"sku": "A-1"}, {"qty": 4111111111111111}, "378282246310005"],
        "4012888888881881": "the key is the card",
        "odd.key": "6011-1111-1111-1117",
        "ok": True,
        "blob": b"4111111111111111",
        "none": None,
        "ratio": 4111111111111111.0,
    }
    paths = pan_paths(document)
    assert paths == [
        "metadata.note",
        "customer.name",
        "items[1].qty",
        "items[2]",
        "<key 4>",
        '["odd.key"]',
        "ratio",
    ]
    for path in paths:
        for pan in TEST_PANS.values():
            assert pan not in path.replace(" ", "").replace("-", "")


def test_pan_paths_of_scalars_and_clean_values() -> None:
    assert pan_paths("4111111111111111") == ["$"]
    assert pan_paths(4111111111111111) == ["$"]
    assert pan_paths(-4111111111111111) == ["$"]
    assert pan_paths(41111111111111110000) == []
    assert pan_paths(10**5000) == []  # beyond Python's int-to-str limit: still no error
    assert pan_paths(True) == []
    assert pan_paths({"a": [1, 2, {"b": "c"}]}) == []


def test_a_value_under_a_card_number_key_keeps_the_key_redacted() -> None:
    document = {"x": 1, "4111111111111111": {"note": "5555555555554444"}}
    assert pan_paths(document) == ["<key 1>", "<key 1>.note"]


def test_deep_and_cyclic_structures() -> None:
    deep: object = "4111111111111111"
    for _ in range(10_000):
        deep = {"a": [deep]}
    paths = pan_paths(deep)
    assert len(paths) == 1 and paths[0].startswith("a[0].a[0]") and paths[0].endswith("a[0]")
    cyclic: dict[str, object] = {"note": "4111111111111111"}
    cyclic["self"] = cyclic
    assert pan_paths(cyclic) == ["note"]
