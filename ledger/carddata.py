"""Card-data guard: find anything that looks like a primary account number (PAN).

Ledger topics are retained forever and cannot be edited, and only sealed
personal data can be crypto-shredded: a card number that reaches a topic in
clear can never be removed. So the guard prefers a false alarm (the merchant
gets a 422 and rephrases) to a miss.

What counts as a PAN
--------------------
A *candidate* is 13 to 19 ASCII digits that pass the Luhn check and do not
start with ``0`` (no issuer identification number starts with 0: major
industry identifier 0 is not used for payment cards, and zero-padded ids are
common in order numbers). Its digits are either contiguous or split into
groups joined by exactly one space or one dash, mixed freely
(``4111 1111 1111 1111``, ``4111-1111-1111-1111``, ``4111 1111-1111 1111``).

A candidate starts and ends at group boundaries: a digit run longer than 19
(``41111111111111111111``, 20 digits) is one number, not a card number
inside another, and is never flagged. Groups are delimited by anything that
is not a digit, so ``card4111111111111111exp`` is flagged.

Decisions on other separators: a dot, a slash, an underscore, a tab or two
spaces in a row do not join groups (``4111.1111.1111.1111`` and
``4111  1111  1111  1111`` are not flagged). Joining more characters would
flag decimal numbers, IP addresses, version strings and dates far more often
than card numbers are written that way. Text is NFKC-normalised first, so
full-width digits and a no-break space count as their ASCII forms.

Cost
----
One pass over the text: a regular expression with no nesting and no
alternation finds the digit runs (linear, no backtracking), and at the end of
each run every candidate ending there is checked by extending a Luhn sum to
the left, which stops after 19 digits. So the work is O(len(text)) with a
constant of at most 19, whatever the input.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

PAN_DIGITS_MIN = 13
PAN_DIGITS_MAX = 19

_DIGIT_RUN = re.compile(r"[0-9]+")
_JOINERS = frozenset(" -")
# Luhn: every second digit from the right is doubled, and 10..18 count as 1..9.
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_KEY_HIT = object()  # marks "the member name at this path holds a card number"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        total += _DOUBLED[digit] if position & 1 else digit
    return total % 10 == 0


def contains_pan(text: str) -> bool:
    """True when ``text`` holds anything that looks like a card number (see the module doc)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    # The digits of the current chain of joined groups, the last PAN_DIGITS_MAX
    # only (no candidate reaches further back), and where each group starts.
    chain: list[int] = []
    starts: list[int] = []
    previous_end = -2
    for run in _DIGIT_RUN.finditer(text):
        begin, end = run.span()
        joined = begin == previous_end + 1 and text[previous_end] in _JOINERS
        previous_end = end
        if not joined:
            chain.clear()
            starts.clear()
        if end - begin > PAN_DIGITS_MAX:
            # Too long to be, or to be part of, a candidate: the next chain starts after it.
            chain.clear()
            starts.clear()
            continue
        starts.append(len(chain))
        chain.extend(ord(char) - 48 for char in run.group())
        if _candidate_ends_here(chain, starts):
            return True
        if len(chain) > PAN_DIGITS_MAX:
            cut = len(chain) - PAN_DIGITS_MAX
            del chain[:cut]
            starts = [start - cut for start in starts if start >= cut]
    return False


def _candidate_ends_here(chain: list[int], starts: list[int]) -> bool:
    """Is there a candidate from some group start to the end of the chain?"""
    end = len(chain)
    total = 0
    index = end
    for start in reversed(starts):
        length = end - start
        if length > PAN_DIGITS_MAX:
            return False
        while index > start:
            index -= 1
            digit = chain[index]
            total += _DOUBLED[digit] if (end - 1 - index) & 1 else digit
        if length >= PAN_DIGITS_MIN and chain[start] != 0 and total % 10 == 0:
            return True
    return False


def pan_paths(value: object) -> list[str]:
    """The paths inside a JSON-like value where a card number appears; never the number.

    Paths use dots for object members and ``[i]`` for array items
    (``customer.name``, ``items[2].note``); a member name that is not a plain
    identifier is written ``["the name"]``. A hit in a member *name* is
    reported as ``<key i>`` (the i-th member, from 0), so the path never
    repeats the number. ``$`` is the value itself when it is a scalar.

    Strings, integers and floats are checked (a JSON number 4111111111111111
    is a card number too); booleans, None and bytes are not text and are
    skipped (sealed ciphertext is bytes). Dicts, lists and tuples are walked
    without recursion, so deep nesting cannot overflow the stack, and a
    container met twice (a cycle) is walked once.
    """
    found: list[str] = []
    seen: set[int] = set()
    pending: list[tuple[str, object]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, Mapping):
            if id(item) in seen:
                continue
            seen.add(id(item))
            children: list[tuple[str, object]] = []
            for index, (key, child) in enumerate(item.items()):
                key_text = str(key)
                if _scalar_has_pan(key):
                    segment = f"<key {index}>"
                    # Reported when reached, so paths come out in document order.
                    children.append((_join(path, segment), _KEY_HIT))
                elif _SIMPLE_KEY.match(key_text):
                    segment = key_text
                else:
                    segment = _quoted(key_text)
                children.append((_join(path, segment), child))
            pending.extend(reversed(children))
        elif isinstance(item, list | tuple):
            if id(item) in seen:
                continue
            seen.add(id(item))
            pending.extend(
                (f"{path}[{index}]", child) for index, child in reversed(list(enumerate(item)))
            )
        elif item is _KEY_HIT or _scalar_has_pan(item):
            found.append(path or "$")
    return list(dict.fromkeys(found))


def _scalar_has_pan(item: object) -> bool:
    if isinstance(item, str):
        return contains_pan(item)
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        # More than 19 digits is never a card number (and str() of a huge int
        # is refused by Python's conversion limit).
        return abs(item) < 10**PAN_DIGITS_MAX and contains_pan(str(item))
    if isinstance(item, float):
        return contains_pan(repr(item))
    return False


def _join(path: str, segment: str) -> str:
    if segment.startswith("["):
        return f"{path}{segment}"
    return f"{path}.{segment}" if path else segment


def _quoted(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'["{escaped}"]'
