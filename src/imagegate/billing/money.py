"""Money is an integer number of micro-dollars everywhere; strings only at the edges."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
# The most one operator amount (a balance, a top-up, a price) may be: far below what the integer
# columns hold, far above any real wallet.
MAX_AMOUNT_USD = 1_000_000_000
AMOUNT_RULE = 'must be a finite amount of US dollars as a decimal string, such as "10" or "0.25"'
_DECIMAL = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")


def parse_usd(value: str | int | float | Decimal) -> int:
    """'0.025' -> 25000. Raises ValueError for anything that is not a finite amount (NaN,
    Infinity, or a number too large to count in micro-dollars)."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not an amount in USD: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a finite amount in USD: {value!r}")
    try:
        return int((amount * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except ArithmeticError as exc:  # decimal's Overflow, or more digits than its precision
        raise ValueError(f"not an amount in USD (too large): {value!r}") from exc


def format_usd(micros: int, *, trim: bool = False) -> str:
    """25000 -> '0.025000' (or '0.025' with trim; always at least two decimals)."""
    text = f"{Decimal(micros) / MICROS_PER_USD:.6f}"
    if trim:
        whole, frac = text.split(".")
        frac = frac.rstrip("0").ljust(2, "0")
        text = f"{whole}.{frac}"
    return text


def parse_amount(value: object, *, positive: bool = False) -> int:
    """An amount an operator gives (a starting balance, a top-up, a price): a plain decimal string
    of dollars, finite, not negative (with ``positive``, above zero), at most six decimals.
    Raises ValueError with the rule it breaks."""
    text = value.strip() if isinstance(value, str) else ""
    if not _DECIMAL.fullmatch(text):
        raise ValueError(AMOUNT_RULE)
    amount = Decimal(text)
    if amount < 0:
        raise ValueError("must not be negative")
    if positive and amount == 0:
        raise ValueError("must be greater than 0")
    if amount != amount.quantize(Decimal(1).scaleb(-6)):
        raise ValueError("must have at most 6 decimal places (one micro-dollar)")
    if amount > MAX_AMOUNT_USD:
        raise ValueError(f"must be at most {MAX_AMOUNT_USD} US dollars")
    return parse_usd(amount)
