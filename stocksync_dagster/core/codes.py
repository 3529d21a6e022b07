"""Security codes: one normalisation for every source (`600000.SH`, `000001.SZ`, `430047.BJ`)."""

from __future__ import annotations

import re

EXCHANGES = ("SH", "SZ", "BJ")
CODE_PATTERN = re.compile(r"^\d{6}\.(SH|SZ|BJ)$")
_BAOSTOCK_PATTERN = re.compile(r"^(sh|sz|bj)\.(\d{6})$")


def is_valid_code(code: str) -> bool:
    """True for a normalised code such as `600000.SH`."""
    return bool(CODE_PATTERN.match(code))


def from_baostock(code: str) -> str:
    """`sh.600000` -> `600000.SH`; raises ValueError on anything else."""
    match = _BAOSTOCK_PATTERN.match(code.strip())
    if not match:
        raise ValueError(f"not a baostock code: {code!r}")
    return f"{match.group(2)}.{match.group(1).upper()}"


def to_baostock(code: str) -> str:
    """`600000.SH` -> `sh.600000`."""
    number, exchange = split_code(code)
    return f"{exchange.lower()}.{number}"


def from_tushare(code: str) -> str:
    """Tushare already uses `600000.SH`; validate and upper-case it."""
    normalised = code.strip().upper()
    if not is_valid_code(normalised):
        raise ValueError(f"not a tushare code: {code!r}")
    return normalised


def split_code(code: str) -> tuple[str, str]:
    """`600000.SH` -> (`600000`, `SH`); raises ValueError on an invalid code."""
    if not is_valid_code(code):
        raise ValueError(f"not a normalised code: {code!r}")
    number, exchange = code.split(".")
    return number, exchange


def exchange_of(code: str) -> str:
    """`SH`, `SZ` or `BJ`."""
    return split_code(code)[1]


def board_of(code: str) -> str:
    """Listing board from the code prefix: `main`, `chinext`, `star` or `bse`."""
    number, exchange = split_code(code)
    if exchange == "BJ":
        return "bse"
    if exchange == "SH" and number.startswith("688"):
        return "star"
    if exchange == "SZ" and number.startswith(("300", "301")):
        return "chinext"
    return "main"
