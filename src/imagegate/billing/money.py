"""Money is an integer number of micro-dollars everywhere; strings only at the edges."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


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
