from __future__ import annotations

from datetime import date

import pytest

from ledger import currencies
from ledger.errors import EncodingError

# Every exponent in ISO 4217 list one (published 2026-01-01) that is not 2.
# An upgrade of the data package that changes any of these, or gives another
# code an exponent other than 2, fails here and has to be looked at: an
# exponent decides what every stored amount in that currency means.
NOT_TWO = {
    "BHD": 3,
    "BIF": 0,
    "CLF": 4,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "PYG": 0,
    "RWF": 0,
    "TND": 3,
    "UGX": 0,
    "UYI": 0,
    "UYW": 4,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
}


def test_list_is_at_least_the_2026_edition() -> None:
    assert currencies.published() >= date(2026, 1, 1)


def test_every_exponent_other_than_two_is_pinned() -> None:
    table = {code: currencies.exponent(code) for code in currencies.known_codes()}
    assert {code: e for code, e in table.items() if e != 2} == NOT_TWO


@pytest.mark.parametrize(
    ("code", "expected"),
    [("EUR", 2), ("USD", 2), ("JPY", 0), ("BHD", 3), ("CLF", 4), ("XCG", 2), ("ZWG", 2)],
)
def test_exponent(code: str, expected: int) -> None:
    assert currencies.exponent(code) == expected


@pytest.mark.parametrize(
    "code",
    # Test, no-currency, precious metals, SDR (minor unit N.A.), withdrawn
    # codes, lower case, padding, and things that are not codes at all.
    [
        "XTS",
        "XXX",
        "XAU",
        "XAG",
        "XPT",
        "XDR",
        "XBA",
        "HRK",
        "SLL",
        "ANG",
        "eur",
        "EUR ",
        "",
        "EURO",
    ],
)
def test_unknown_codes_are_refused(code: str) -> None:
    assert not currencies.is_known(code)
    with pytest.raises(EncodingError):
        currencies.exponent(code)


def test_known_codes_are_three_upper_case_letters() -> None:
    codes = currencies.known_codes()
    assert len(codes) > 150
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in codes)
    assert currencies.is_known("EUR")


@pytest.mark.parametrize(
    ("amount", "code", "minor"),
    [
        ("10.50", "EUR", 1050),
        ("10.5", "EUR", 1050),
        ("10", "EUR", 1000),
        ("0.01", "EUR", 1),
        ("0", "EUR", 0),
        ("100", "JPY", 100),
        ("1.234", "BHD", 1234),
        ("1.2345", "CLF", 12345),
        ("0.0001", "CLF", 1),
        ("92233720368547758.07", "EUR", 2**63 - 1),
    ],
)
def test_to_minor_units(amount: str, code: str, minor: int) -> None:
    assert currencies.to_minor_units(amount, code) == minor


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        ("10.505", "EUR"),  # more fraction digits than the currency has
        ("10.500", "EUR"),  # even when the extra digit is zero
        ("100.0", "JPY"),
        ("1.23456", "CLF"),
        ("-1.00", "EUR"),
        ("+1.00", "EUR"),
        ("1e3", "EUR"),
        ("1E3", "EUR"),
        ("NaN", "EUR"),
        ("nan", "EUR"),
        ("Infinity", "EUR"),
        ("", "EUR"),
        (".50", "EUR"),
        ("10.", "EUR"),
        (" 10.50", "EUR"),
        ("10.50\n", "EUR"),
        ("1,000.00", "EUR"),
        ("1_000", "EUR"),
        ("\u0661\u0660", "EUR"),  # Arabic-Indic digits: int() would take them
        ("92233720368547758.08", "EUR"),  # one past the 64-bit range
        ("9" * 33, "JPY"),
        ("10.50", "XXX"),
        ("10.50", "eur"),
    ],
)
def test_to_minor_units_refuses(amount: str, code: str) -> None:
    with pytest.raises(EncodingError):
        currencies.to_minor_units(amount, code)


def test_to_minor_units_refuses_non_strings() -> None:
    with pytest.raises(EncodingError):
        currencies.to_minor_units(10.5, "EUR")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("minor", "code", "text"),
    [
        (1050, "EUR", "10.50"),
        (5, "EUR", "0.05"),
        (0, "EUR", "0.00"),
        (-5, "EUR", "-0.05"),
        (-1050, "EUR", "-10.50"),
        (100, "JPY", "100"),
        (0, "JPY", "0"),
        (1234, "BHD", "1.234"),
        (1, "CLF", "0.0001"),
    ],
)
def test_from_minor_units(minor: int, code: str, text: str) -> None:
    assert currencies.from_minor_units(minor, code) == text


@pytest.mark.parametrize("minor", [10.5, True, "1050"])
def test_from_minor_units_refuses_non_integers(minor: object) -> None:
    with pytest.raises(EncodingError):
        currencies.from_minor_units(minor, "EUR")  # type: ignore[arg-type]


def test_from_minor_units_refuses_unknown_currency() -> None:
    with pytest.raises(EncodingError):
        currencies.from_minor_units(100, "XTS")


def test_round_trip_in_every_currency() -> None:
    for code in currencies.known_codes():
        for minor in (0, 1, 7, 10 ** currencies.exponent(code), 123_456_789):
            text = currencies.from_minor_units(minor, code)
            assert currencies.to_minor_units(text, code) == minor, (code, minor, text)
