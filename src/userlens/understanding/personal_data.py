"""Personal data in answer files (NCLUE refuses them: 422 / 10109 PERSONAL_DATA_NOT_ALLOWED).

The scan runs regular expressions over whole decoded blocks (fast, C-level), then validates each
candidate so that ordinary ids are not flagged. What counts (documented in the README):

  e-mail      name@domain.tld
  phone       Korean mobile 01X-XXXX-XXXX (separators optional), Korean landline with separators,
              Japanese mobile 0X0-XXXX-XXXX, international +CC numbers
  rrn         Korean resident registration number YYMMDD-GXXXXXX with a valid date and gender
              digit; without the hyphen the number must also pass the check digit
  card        13-19 digits (spaces or hyphens allowed) with a card-brand prefix (Visa, Mastercard,
              Amex, JCB, Discover, UnionPay, Diners) that pass the Luhn check
  passport    Korean (M/S/R/O/D + 8 digits, or M + 3 digits + letter + 4 digits) and Japanese
              (2 letters + 7 digits) passport numbers, as whole words
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# Bounded repetitions (RFC 5321: local part <= 64, domain <= 255): with `+`, a long run of word
# characters without an '@' made the search quadratic (a 200 KB token took 80 s).
EMAIL = re.compile(r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,63}")
PHONE = re.compile(
    r"(?<![\d+])(?:01[016789][-. ]?\d{3,4}[-. ]?\d{4}|0(?:2|[3-6][1-5])[-. ]\d{3,4}[-. ]\d{4}|0[789]0-?\d{4}-?\d{4}|\+\d{1,3}[-. ]?\(?\d{1,4}\)?[-. ]?\d{3,4}[-. ]?\d{4})(?!\d)"
)
RRN = re.compile(r"(?<!\d)(\d{2})(\d{2})(\d{2})(-?)([1-8])(\d{6})(?!\d)")
CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
PASSPORT = re.compile(r"(?<![A-Za-z0-9])(?:[MSROD]\d{8}|M\d{3}[A-Z]\d{4}|[A-Z]{2}\d{7})(?![A-Za-z0-9])")

CARD_PREFIXES = ("4", "51", "52", "53", "54", "55", "34", "37", "35", "6011", "65", "62", "36", "38", "30") + tuple(str(p) for p in range(2221, 2721))


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(m: re.Match) -> bool:
    digits = re.sub(r"[ \-]", "", m.group(0))
    return 13 <= len(digits) <= 19 and digits.startswith(CARD_PREFIXES) and luhn_ok(digits)


def _rrn(m: re.Match) -> bool:
    _yy, mm, dd, hyphen, gender, rest = m.groups()
    if not (1 <= int(mm) <= 12 and 1 <= int(dd) <= 31):
        return False
    if hyphen:
        return True
    digits = "".join(m.groups()[:3]) + gender + rest
    weights = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
    check = (11 - sum(int(a) * b for a, b in zip(digits[:12], weights)) % 11) % 10
    return check == int(digits[12])


DETECTORS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    ("e-mail address", EMAIL, None),
    ("resident registration number", RRN, _rrn),
    ("card number", CARD, _card),
    ("phone number", PHONE, None),
    ("passport number", PASSPORT, None),
]


@dataclass(frozen=True)
class Finding:
    kind: str
    line: int  # 1-based line number in the file

    def describe(self, where: str) -> str:
        return f"{self.kind} in {where} line {self.line}"


def scan_text(text: str, first_line: int = 1) -> Finding | None:
    """The first personal datum in `text` (by position), or None."""
    best: tuple[int, str] | None = None
    for kind, pattern, valid in DETECTORS:
        for m in pattern.finditer(text):
            if valid is None or valid(m):
                if best is None or m.start() < best[0]:
                    best = (m.start(), kind)
                break
    if best is None:
        return None
    return Finding(best[1], first_line + text.count("\n", 0, best[0]))
