"""Money amounts as text: the one encoding `common.proto` Money allows, both ways."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from stepline_vocab.errors import BadInputError

__all__ = ["MoneyError", "format_amount", "parse_amount"]


class MoneyError(BadInputError):
    """An amount is not a finite decimal (or is negative where that is not allowed)."""


def format_amount(amount: Decimal) -> str:
    """Plain digits, optional "-", no exponent, no trailing zeros: Decimal("5E-7") -> "0.0000005".

    Exact: no rounding to the decimal context's precision (`normalize()` would round).
    """
    if not amount.is_finite():
        raise MoneyError(f"amount {amount} is not finite")
    if amount.is_zero():
        return "0"  # folds "-0" and "0E-7"
    text = f"{amount:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_amount(text: str, *, what: str = "amount", negative: bool = False) -> Decimal:
    """The Decimal of a Money amount; "" is zero.

    Lenient on purpose: an exponent written by an older producer still reads exactly; only
    non-numbers, non-finite values and (unless `negative`) negative amounts are refused.
    """
    if not text:
        return Decimal(0)
    try:
        value = Decimal(text.strip())
    except InvalidOperation as error:
        raise MoneyError(f"{what} {text!r} is not a decimal") from error
    if not value.is_finite():
        raise MoneyError(f"{what} {text!r} is not finite")
    if value < 0 and not negative:
        raise MoneyError(f"{what} {text!r} must not be negative")
    return value
