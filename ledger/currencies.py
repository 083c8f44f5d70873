"""ISO 4217 currencies and their minor units, and exact conversions to and from them.

The data is ISO 4217 list one as its maintenance agency (SIX) publishes it,
shipped verbatim by the ``iso4217`` package (``table.xml``; version
1.16.20260101 carries the list published 2026-01-01). Its ``CcyMnrUnts`` is the
official minor-unit exponent; CLDR's "digits" (what ``babel`` reports) differ
for several codes and would make us disagree with providers about what an
amount means, so they are not used.

Only codes with a numeric minor unit are known here. That keeps the funds that
have one (``CLF`` 4, ``UYW`` 4, ``BOV`` 2...) and drops the codes whose minor
unit is "N.A.": precious metals (``XAU``, ``XAG``...), bond-market units,
``XDR``, ``XSU``, ``XUA`` and the test and no-currency codes ``XTS`` and
``XXX``. None of those can be paid with.

An upgrade of ``iso4217`` can change this table; ``tests/unit/test_currencies.py``
pins every exponent that is not 2, so such a change is reviewed, never silent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import date
from types import MappingProxyType

from ledger.errors import EncodingError

# An amount is plain digits with an optional fraction: no sign, exponent,
# grouping, whitespace or non-ASCII digits ("\d" would admit "٣").
_DECIMAL = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))?")
# Longer strings cannot hold a 64-bit amount; refusing them first keeps the
# integer conversion cheap whatever a caller sends.
_DECIMAL_CHARS_MAX = 32
_LONG_MAX = 2**63 - 1


@functools.cache
def _table() -> Mapping[str, int]:
    # Imported here, not at module level: ``iso4217`` parses its XML table on
    # import, and importing payledger modules must do no work.
    import iso4217  # noqa: PLC0415

    exponents: dict[str, int] = {}
    for code, entry in iso4217.raw_table.items():
        minor_units = entry.get("CcyMnrUnts")
        if isinstance(minor_units, str) and minor_units.isdigit():
            exponents[code] = int(minor_units)
    return MappingProxyType(exponents)


def published() -> date:
    """The publication date of the ISO 4217 list this table follows."""
    import iso4217  # noqa: PLC0415  (see _table)

    return iso4217.__published__


def known_codes() -> frozenset[str]:
    """Every currency code that can carry an amount."""
    return frozenset(_table())


def is_known(code: str) -> bool:
    """Whether ``code`` is an active ISO 4217 code with minor units; exact, upper case."""
    return code in _table()


def exponent(code: str) -> int:
    """The number of minor-unit digits of ``code``: EUR 2, JPY 0, BHD 3, CLF 4."""
    try:
        return _table()[code]
    except (KeyError, TypeError):
        # TypeError: an unhashable argument is as unknown as a misspelled code.
        raise EncodingError("unknown ISO 4217 currency code") from None


def to_minor_units(amount: str, code: str) -> int:
    """``"10.50"`` EUR -> 1050, exactly.

    Refuses, with ``EncodingError``: more fraction digits than the currency has
    (``"10.505"`` EUR, ``"100.0"`` JPY), a sign, an exponent, NaN or infinity,
    grouping, whitespace, a missing digit on either side of the point, and an
    amount beyond the 64-bit range the ledger stores.
    """
    digits = exponent(code)
    if not isinstance(amount, str) or len(amount) > _DECIMAL_CHARS_MAX:
        raise EncodingError("amount must be a decimal string of at most 32 characters")
    match = _DECIMAL.fullmatch(amount)
    if match is None:
        raise EncodingError("amount must be plain digits with an optional fraction, like 10.50")
    fraction = match["fraction"] or ""
    if len(fraction) > digits:
        raise EncodingError(f"{code} amounts have at most {digits} fraction digits")
    minor = int(match["whole"] + fraction.ljust(digits, "0"))
    if minor > _LONG_MAX:
        raise EncodingError("amount is outside the 64-bit range")
    return minor


def from_minor_units(minor: int, code: str) -> str:
    """1050 EUR -> ``"10.50"``; 100 JPY -> ``"100"``; -5 EUR -> ``"-0.05"``.

    Negative amounts are rendered (postings and balances can be negative),
    though ``to_minor_units`` takes none: requests never carry a sign.
    """
    digits = exponent(code)
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise EncodingError("minor units must be an integer")
    sign = "-" if minor < 0 else ""
    text = str(abs(minor))
    if digits == 0:
        return sign + text
    text = text.rjust(digits + 1, "0")
    return f"{sign}{text[:-digits]}.{text[-digits:]}"
