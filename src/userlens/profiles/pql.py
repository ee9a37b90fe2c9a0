"""A documented subset of PQL (Profile Query Language, reference §8.2): parser and evaluator.

Supported (``pql/text``):

* profile attributes by dotted path, implicitly on the profile (``person.name.firstName``) or through
  ``profile.`` / ``Profile.``;
* comparisons ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` against a literal; ``path in [v1, v2]`` (and
  ``path.in([...])``); ``path.contains("x")``, ``path.startsWith("x")``, ``path.endsWith("x")``,
  ``path.equals("x")`` (a second argument ``false`` makes them case-insensitive); ``path.exists()``,
  ``path.isNotNull()``, ``path.isNull()``;
* ``and``, ``or``, ``not`` (also ``not(...)``) and parentheses;
* literals: double-quoted strings, integers, decimals, ``true``/``false``, arrays ``[...]``,
  ``date(y, m, d)``;
* conditions on the profile's ExperienceEvents (``xEvent``):
  ``select X from xEvent where COND`` (at least one such event exists),
  ``(select X from xEvent where COND).count() >= N`` (any comparison), ``xEvent.count() > N``, and
  inside COND, besides the comparisons above on ``X.path``, the time window
  ``X.timestamp occurs <= 7 days before now`` (``<``, ``<=``, ``>``, ``>=``, ``=``; units millisecond
  ... year, singular or plural; a month is 30 days, a year 365).

Everything else (``chain``, ``forall``, arithmetic, map and aggregation functions other than count,
``pql/json``) is rejected by `parse` with `PqlError` naming the unsupported part.

Semantics: a comparison with a missing field is false (so ``not`` of it is true); strings compare as
strings, numbers as numbers; a ``date(...)`` literal compares with date-time strings and epoch-ms
numbers by calendar day; booleans only equal booleans.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Callable

from userlens.profiles.xdm import parse_timestamp_ms

UNIT_MS = {
    "millisecond": 1, "second": 1000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000,
    "week": 7 * 86_400_000, "month": 30 * 86_400_000, "year": 365 * 86_400_000,
}
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><=|>=|!=|=>|==|[=<>()\[\],.:])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))')
KNOWN_UNSUPPORTED = {"chain", "forall", "exists", "split", "sum", "avg", "min", "max", "topN", "bottomN", "like", "matches", "upperCase", "lowerCase", "length", "substr", "intersects", "subsetOf", "supersetOf", "includes", "distinct", "head", "filter", "map", "groupBy", "occurs", "inSegment", "first", "last"}


class PqlError(ValueError):
    """The expression is not valid PQL or uses a part userlens does not support."""


@dataclass
class Tok:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[Tok]:
    out, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        m = _TOKEN.match(text, i)
        if not m or m.end() == i:
            raise PqlError(f"unsupported PQL: unexpected character {text[i:].lstrip()[:1]!r} at position {i}")
        kind = m.lastgroup
        out.append(Tok(kind, m.group(kind), m.start(kind)))
        i = m.end()
    out.append(Tok("end", "", len(text)))
    return out


# -- AST: small callables built by the parser ---------------------------------------------------------
# A profile predicate takes (attrs: dict, events: EventSource) -> bool; an event predicate (event doc,
# now_ms) -> bool. `Compiled.uses_events` says whether events must be read at all.


class Date:
    def __init__(self, d: dt.date):
        self.d = d

    def __repr__(self):
        return f"date({self.d.year}, {self.d.month}, {self.d.day})"


def _day_of(value: Any) -> dt.date | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc).date()
    if isinstance(value, str):
        ms = parse_timestamp_ms(value)
        if ms is not None:
            return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date()
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _cmp(a: Any, op: str, b: Any) -> bool:
    if a is None:
        return False
    if isinstance(b, Date):
        a, b = _day_of(a), b.d
        if a is None:
            return False
    elif isinstance(b, bool) or isinstance(a, bool):
        if not (isinstance(a, bool) and isinstance(b, bool)) or op not in ("=", "!="):
            return False
    elif isinstance(b, (int, float)):
        if not isinstance(a, (int, float)):
            return False
    elif isinstance(b, str):
        if not isinstance(a, str):
            return False
    try:
        return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    except TypeError:
        return False


def _getter(path: tuple[str, ...]) -> Callable[[dict], Any]:
    def get(doc: dict):
        node: Any = doc
        for p in path:
            if not isinstance(node, dict):
                return None
            node = node.get(p)
            if node is None:
                return None
        return node

    return get


@dataclass
class Compiled:
    text: str
    predicate: Callable[[dict, Any, int], bool]  # (attrs, events or None, now_ms)
    uses_events: bool
    paths: set[str]

    def matches(self, attrs: dict, events: list[dict] | None, now_ms: int) -> bool:
        return bool(self.predicate(attrs, events or [], now_ms))


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.uses_events = False
        self.paths: set[str] = set()

    # -- helpers ------------------------------------------------------------------------------
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def is_word(self, word: str, tok: Tok | None = None) -> bool:
        t = tok or self.tok
        return t.kind == "name" and t.text.lower() == word

    def expect(self, text: str) -> Tok:
        t = self.tok
        if t.text != text and not (t.kind == "name" and t.text.lower() == text):
            self.fail(f"expected {text!r}")
        return self.take()

    def fail(self, what: str):
        t = self.tok
        near = self.text[t.pos : t.pos + 30] or "end of expression"
        raise PqlError(f"invalid PQL: {what} at position {t.pos} (near {near!r})")

    def unsupported(self, part: str, tok: Tok):
        raise PqlError(f"unsupported PQL: {part} at position {tok.pos}; userlens supports attribute comparisons (=, !=, <, <=, >, >=, in, contains, startsWith, endsWith, equals, exists, isNull, isNotNull), and/or/not, and event conditions (select X from xEvent where ..., .count(), X.timestamp occurs ... before now)")

    # -- grammar --------------------------------------------------------------------------------
    def parse(self) -> Compiled:
        if not self.text.strip():
            raise PqlError("invalid PQL: the expression is empty")
        pred = self.or_expr(event=False)
        if self.tok.kind != "end":
            self.fail("unexpected text")
        return Compiled(self.text, pred, self.uses_events, self.paths)

    def or_expr(self, event: bool):
        parts = [self.and_expr(event)]
        while self.is_word("or"):
            self.take()
            parts.append(self.and_expr(event))
        if len(parts) == 1:
            return parts[0]
        return lambda *a: any(p(*a) for p in parts)

    def and_expr(self, event: bool):
        parts = [self.not_expr(event)]
        while self.is_word("and"):
            self.take()
            parts.append(self.not_expr(event))
        if len(parts) == 1:
            return parts[0]
        return lambda *a: all(p(*a) for p in parts)

    def not_expr(self, event: bool):
        if self.is_word("not"):
            self.take()
            inner = self.not_expr(event)
            return lambda *a: not inner(*a)
        if self.tok.text == "(":
            # A parenthesised condition, or "(select ...).count() OP N".
            if self.is_word("select", self.peek()):
                return self.event_count_or_exists(event)
            self.take()
            inner = self.or_expr(event)
            self.expect(")")
            return inner
        if self.is_word("select"):
            return self.select_exists(event)
        if self.is_word("true") or self.is_word("false"):
            v = self.take().text.lower() == "true"
            return lambda *a: v
        return self.predicate(event)

    # -- events ---------------------------------------------------------------------------------
    def select_clause(self, event: bool):
        start = self.tok
        if event:
            self.unsupported("a nested select", start)
        self.expect("select")
        var = self.take()
        if var.kind != "name":
            self.fail("expected a variable name after select")
        self.expect("from")
        src = self.take()
        if src.text != "xEvent":
            self.unsupported(f"select from {src.text!r} (only xEvent)", src)
        cond = None
        if self.is_word("where"):
            self.take()
            self.var = var.text
            cond = self.or_expr(event=True)
            self.var = None
        self.uses_events = True
        return cond

    def select_exists(self, event: bool):
        cond = self.select_clause(event)
        if cond is None:
            return lambda attrs, events, now: bool(events)
        return lambda attrs, events, now: any(cond(e, None, now) for e in events)

    def event_count_or_exists(self, event: bool):
        self.expect("(")
        cond = self.select_clause(event)
        self.expect(")")
        if self.tok.text != ".":
            return (lambda attrs, events, now: bool(events)) if cond is None else (lambda attrs, events, now: any(cond(e, None, now) for e in events))
        return self.count_tail(cond)

    def count_tail(self, cond):
        self.expect(".")
        fn = self.take()
        if fn.text != "count":
            self.unsupported(f"function {fn.text!r} on events", fn)
        self.expect("(")
        self.expect(")")
        op = self.take()
        if op.text not in ("=", "==", "!=", "<", "<=", ">", ">="):
            self.fail("expected a comparison after count()")
        n = self.literal()
        if not isinstance(n, int) or isinstance(n, bool):
            self.fail("count() compares with an integer")
        op_text = "=" if op.text == "==" else op.text

        def pred(attrs, events, now):
            c = len(events) if cond is None else sum(1 for e in events if cond(e, None, now))
            return _cmp(c, op_text, n)

        return pred

    # -- predicates -----------------------------------------------------------------------------
    var: str | None = None

    def path(self, event: bool) -> tuple[str, ...]:
        first = self.take()
        if first.kind != "name":
            self.fail("expected a field path")
        if first.text in KNOWN_UNSUPPORTED and self.tok.text == "(":
            self.unsupported(f"function {first.text!r}", first)
        if first.text == "xEvent":
            if self.tok.text == "." and self.peek().text == "count":
                return ("xEvent",)
            self.unsupported("xEvent outside select ... from xEvent (or xEvent.count())", first)
        names = [first.text]
        if event:
            if first.text != self.var:
                self.unsupported(f"{first.text!r} inside the event condition (use the select variable, e.g. {self.var}.eventType)", first)
            names = []
        elif first.text in ("profile", "Profile", "$1"):
            names = []
        while self.tok.text == "." and self.peek().kind == "name" and self.toks[self.i + 2].text != "(":
            self.take()
            names.append(self.take().text)
        if not names:
            self.fail("expected a field after the variable")
        return tuple(names)

    def predicate(self, event: bool):
        start = self.tok
        path = self.path(event)
        if path == ("xEvent",):
            self.uses_events = True
            return self.count_tail(None)
        if not event:
            self.paths.add(".".join(path))
        get = _getter(path)
        # In an event condition the subject is the event document; on the profile, its attributes.
        tok = self.tok
        if tok.text == ".":
            self.take()
            fn = self.take()
            return self.method(fn, get, path, event)
        if self.is_word("in"):
            self.take()
            values = self.literal()
            if not isinstance(values, list):
                self.fail("in needs an array [...]")
            return self._in(get, values)
        if self.is_word("occurs"):
            return self.occurs(get, path, event)
        if tok.text in ("=", "==", "!=", "<", "<=", ">", ">="):
            self.take()
            value = self.literal()
            op = "=" if tok.text == "==" else tok.text
            return lambda subj, events, now: _cmp(get(subj), op, value)
        if tok.kind == "end":
            self.fail(f"a field path ({'.'.join(path)}) alone is not a condition")
        self.unsupported(f"operator {tok.text!r}", tok) if tok.kind in ("op", "name") else self.fail("expected an operator")
        return None

    @staticmethod
    def _in(get, values):
        vs = list(values)
        return lambda subj, events, now: any(_cmp(get(subj), "=", v) for v in vs)

    def method(self, fn: Tok, get, path, event: bool):
        name = fn.text
        self.expect("(")
        args = []
        while self.tok.text != ")":
            args.append(self.literal())
            if self.tok.text == ",":
                self.take()
            elif self.tok.text != ")":
                self.fail("expected ',' or ')'")
        self.expect(")")
        if name in ("exists", "isNotNull"):
            return lambda subj, events, now: get(subj) is not None
        if name == "isNull":
            return lambda subj, events, now: get(subj) is None
        if name == "in":
            if len(args) != 1 or not isinstance(args[0], list):
                self.fail("in() takes one array")
            return self._in(get, args[0])
        if name in ("contains", "startsWith", "endsWith", "equals"):
            if not args or not isinstance(args[0], str) or len(args) > 2:
                self.fail(f"{name}() takes a string (and optionally false for case-insensitive)")
            needle = args[0]
            case = not (len(args) == 2 and args[1] is False)
            if not case:
                needle = needle.lower()
            op = {"contains": lambda a, b: b in a, "startsWith": str.startswith, "endsWith": str.endswith, "equals": lambda a, b: a == b}[name]

            def pred(subj, events, now):
                v = get(subj)
                if not isinstance(v, str):
                    return False
                return op(v if case else v.lower(), needle)

            return pred
        self.unsupported(f"function {name!r}", fn)
        return None

    def occurs(self, get, path, event: bool):
        tok = self.take()  # occurs
        if not event:
            self.unsupported("occurs outside an event condition", tok)
        op = self.take()
        if op.text not in ("<", "<=", ">", ">=", "="):
            self.unsupported(f"occurs {op.text}", op)
        n = self.literal()
        unit = self.take()
        u = unit.text.lower().rstrip("s") if unit.kind == "name" else ""
        if u == "millennia" or u == "millennium" or u == "century" or u == "centurie":
            self.unsupported(f"unit {unit.text!r}", unit)
        if not isinstance(n, (int, float)) or u not in UNIT_MS:
            self.fail("expected N UNIT (e.g. 7 days)")
        if not self.is_word("before"):
            self.unsupported(f"{self.tok.text!r} (only '... before now')", self.tok)
        self.take()
        if not self.is_word("now"):
            self.unsupported(f"{self.tok.text!r} (only 'before now')", self.tok)
        self.take()
        span = int(n * UNIT_MS[u])
        o = op.text

        def pred(subj, events, now):
            v = get(subj)
            ms = v if isinstance(v, (int, float)) and not isinstance(v, bool) else parse_timestamp_ms(v)
            if ms is None:
                return False
            return _cmp(now - ms, o, span)  # "occurs <= 7 days before now": at most 7 days ago

        return pred

    def literal(self) -> Any:
        t = self.take()
        if t.kind == "str":
            return bytes(t.text[1:-1], "utf-8").decode("unicode_escape") if "\\" in t.text else t.text[1:-1]
        if t.kind == "num":
            return float(t.text) if "." in t.text else int(t.text)
        if t.kind == "name" and t.text.lower() in ("true", "false"):
            return t.text.lower() == "true"
        if t.kind == "name" and t.text == "date":
            self.expect("(")
            parts = [self.literal()]
            while self.tok.text == ",":
                self.take()
                parts.append(self.literal())
            self.expect(")")
            if not 1 <= len(parts) <= 3 or not all(isinstance(p, int) for p in parts):
                self.fail("date(year, month, day) takes integers")
            try:
                return Date(dt.date(*(parts + [1, 1])[:3]))
            except ValueError as exc:
                self.fail(str(exc))
        if t.text == "[":
            out = []
            while self.tok.text != "]":
                out.append(self.literal())
                if self.tok.text == ",":
                    self.take()
                elif self.tok.text != "]":
                    self.fail("expected ',' or ']'")
            self.take()
            return out
        if t.kind == "name" and t.text in ("now", "today", "yesterday", "tomorrow"):
            self.i -= 1
            self.unsupported(f"the time word {t.text!r} outside 'occurs ... before now'", t)
        self.i -= 1
        self.fail("expected a literal (string, number, true/false, [..], date(...))")
        return None


def parse(text: str) -> Compiled:
    """Parses a pql/text expression; raises PqlError naming what is invalid or unsupported."""
    if not isinstance(text, str):
        raise PqlError("expression.value must be a string")
    return _Parser(text).parse()


def compile_expression(expression: Any) -> Compiled:
    """The `expression` object of a segment definition: {type: PQL, format: pql/text, value}."""
    if not isinstance(expression, dict):
        raise PqlError("expression is required: {\"type\": \"PQL\", \"format\": \"pql/text\", \"value\": ...}")
    if expression.get("type", "PQL") != "PQL":
        raise PqlError(f"unsupported expression.type {expression.get('type')!r}: only PQL")
    fmt = expression.get("format", "pql/text")
    if fmt != "pql/text":
        raise PqlError(f"unsupported PQL: expression.format {fmt!r}; userlens supports pql/text")
    return parse(expression.get("value"))
