"""The subset of the IoT Hub query language the emulator understands, compiled to
predicates over :class:`~local.emulator.store.DeviceRecord`.

Grammar (keywords case-insensitive)::

    query     := SELECT * FROM devices [WHERE condition]
    condition := term (OR term)*
    term      := factor (AND factor)*
    factor    := NOT factor | '(' condition ')' | IS_DEFINED '(' path ')'
               | path op literal | path IN '[' literal (',' literal)* ']'
    op        := = | != | <> | < | <= | > | >=
    path      := deviceId | status | connectionState | authenticationType | version
               | properties.reported.<a.b...> | properties.desired.<a.b...> | tags.<a.b...>
    literal   := 'string' | "string" | number | true | false

As in IoT Hub, a comparison with an undefined property or a value of another type is
false (also for ``!=``); strings compare by code point, so ISO-8601 UTC timestamps of
one format compare in time order.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from local.emulator.store import DeviceRecord
from shared.domain.errors import InvalidRequestError

Predicate = Callable[[DeviceRecord], bool]
Getter = Callable[[DeviceRecord], Any]

_MISSING = object()

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")
      | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[()\[\],*])
      | (?P<word>[A-Za-z_$][A-Za-z0-9_$\-]*(?:\.[A-Za-z_$][A-Za-z0-9_$\-]*)*)
    )""",
    re.VERBOSE,
)


def _bad(message: str) -> InvalidRequestError:
    return InvalidRequestError("query_invalid", message)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    value: Any = None


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _bad(f"unexpected text at position {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group(kind)
        if kind == "str":
            q = raw[0]
            toks.append(_Tok("lit", raw, raw[1:-1].replace(q + q, q)))
        elif kind == "num":
            value: float | int = float(raw) if any(c in raw for c in ".eE") else int(raw)
            toks.append(_Tok("lit", raw, value))
        elif kind == "word" and raw.lower() in ("true", "false"):
            toks.append(_Tok("lit", raw, raw.lower() == "true"))
        else:
            toks.append(_Tok(kind, raw))
    return toks


# ------------------------------------------------------------------------- getters

_ROOTS: dict[str, Getter] = {
    "deviceid": lambda d: d.device_id,
    "status": lambda d: d.status.value,
    "connectionstate": lambda d: d.connection_state,
    "authenticationtype": lambda d: d.auth_type,
    "version": lambda d: d.version,
}


def _dict_getter(attr: str, keys: list[str]) -> Getter:
    """A getter for ``record.<attr>[k1][k2]...`` returning _MISSING when absent."""
    if not keys:
        raise _bad(f"a path under {attr} needs a property name")
    source = operator.attrgetter(attr)
    if len(keys) == 1:
        (k1,) = keys

        def get1(d: DeviceRecord) -> Any:
            src = source(d)
            return _MISSING if src is None else src.get(k1, _MISSING)

        return get1
    if len(keys) == 2:
        k1, k2 = keys

        def get2(d: DeviceRecord) -> Any:
            src = source(d)
            if src is None:
                return _MISSING
            mid = src.get(k1)
            return mid.get(k2, _MISSING) if mid.__class__ is dict else _MISSING

        return get2
    if len(keys) == 3:
        k1, k2, k3 = keys

        def get3(d: DeviceRecord) -> Any:
            src = source(d)
            if src is None:
                return _MISSING
            mid = src.get(k1)
            if mid.__class__ is not dict:
                return _MISSING
            mid = mid.get(k2)
            return mid.get(k3, _MISSING) if mid.__class__ is dict else _MISSING

        return get3

    def getn(d: DeviceRecord) -> Any:
        cur: Any = source(d)
        for k in keys:
            if not isinstance(cur, dict):
                return _MISSING
            cur = cur.get(k, _MISSING)
            if cur is _MISSING:
                return _MISSING
        return cur

    return getn


def _getter(path: str) -> Getter:
    parts = path.split(".")
    head = parts[0].lower()
    if len(parts) == 1 and head in _ROOTS:
        return _ROOTS[head]
    if head == "properties" and len(parts) >= 2:
        section = parts[1].lower()
        if section == "reported":
            if parts[2:] == ["$version"]:
                return lambda d: d.reported_version
            return _dict_getter("reported", parts[2:])
        if section == "desired":
            if parts[2:] == ["$version"]:
                return lambda d: d.desired_version
            return _dict_getter("desired", parts[2:])
    if head == "tags":
        return _dict_getter("tags", parts[1:])
    raise _bad(
        f"unsupported path {path!r}: use deviceId, status, connectionState, "
        "properties.reported.*, properties.desired.* or tags.*"
    )


# ------------------------------------------------------------------------- comparisons


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "num"
    if isinstance(v, str):
        return "str"
    return "other"


_NUMBERS = frozenset({int, float})


def _compare(get: Getter, op: str, lit: Any) -> Predicate:
    """A predicate ``get(d) <op> lit`` that is false when the value is undefined or of
    another type than the literal (bool, number or string)."""
    kind = _kind(lit)
    if kind == "bool" and op not in ("=", "!=", "<>"):
        raise _bad(f"operator {op} does not apply to booleans")
    if kind == "num":
        return _compare_num(get, op, lit)
    cls = str if kind == "str" else bool
    if op == "=":
        return lambda d: (v := get(d)).__class__ is cls and v == lit
    if op in ("!=", "<>"):
        return lambda d: (v := get(d)).__class__ is cls and v != lit
    if op == "<":
        return lambda d: (v := get(d)).__class__ is cls and v < lit
    if op == "<=":
        return lambda d: (v := get(d)).__class__ is cls and v <= lit
    if op == ">":
        return lambda d: (v := get(d)).__class__ is cls and v > lit
    if op == ">=":
        return lambda d: (v := get(d)).__class__ is cls and v >= lit
    raise _bad(f"unknown operator {op}")  # pragma: no cover - the tokenizer limits ops


def _compare_num(get: Getter, op: str, lit: Any) -> Predicate:
    nums = _NUMBERS
    if op == "=":
        return lambda d: (v := get(d)).__class__ in nums and v == lit
    if op in ("!=", "<>"):
        return lambda d: (v := get(d)).__class__ in nums and v != lit
    if op == "<":
        return lambda d: (v := get(d)).__class__ in nums and v < lit
    if op == "<=":
        return lambda d: (v := get(d)).__class__ in nums and v <= lit
    if op == ">":
        return lambda d: (v := get(d)).__class__ in nums and v > lit
    if op == ">=":
        return lambda d: (v := get(d)).__class__ in nums and v >= lit
    raise _bad(f"unknown operator {op}")  # pragma: no cover - the tokenizer limits ops


# ------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise _bad("unexpected end of query")
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text.lower() == word

    def expect_word(self, word: str) -> None:
        tok = self.next()
        if tok.kind != "word" or tok.text.lower() != word:
            raise _bad(f"expected {word.upper()}, found {tok.text!r}")

    def expect_punct(self, p: str) -> None:
        tok = self.next()
        if tok.kind != "punct" or tok.text != p:
            raise _bad(f"expected {p!r}, found {tok.text!r}")

    def condition(self) -> Predicate:
        terms = [self.term()]
        while self.is_word("or"):
            self.next()
            terms.append(self.term())
        if len(terms) == 1:
            return terms[0]
        if len(terms) == 2:
            a, b = terms
            return lambda d: a(d) or b(d)
        return lambda d: any(t(d) for t in terms)

    def term(self) -> Predicate:
        factors = [self.factor()]
        while self.is_word("and"):
            self.next()
            factors.append(self.factor())
        if len(factors) == 1:
            return factors[0]
        if len(factors) == 2:
            a, b = factors
            return lambda d: a(d) and b(d)
        return lambda d: all(f(d) for f in factors)

    def factor(self) -> Predicate:
        tok = self.next()
        if tok.kind == "word" and tok.text.lower() == "not":
            inner = self.factor()
            return lambda d: not inner(d)
        if tok.kind == "punct" and tok.text == "(":
            cond = self.condition()
            self.expect_punct(")")
            return cond
        if tok.kind == "word" and tok.text.lower() == "is_defined":
            self.expect_punct("(")
            path = self.next()
            if path.kind != "word":
                raise _bad(f"IS_DEFINED takes a property path, found {path.text!r}")
            get = _getter(path.text)
            self.expect_punct(")")
            return lambda d: get(d) is not _MISSING
        if tok.kind != "word":
            raise _bad(f"expected a property path, found {tok.text!r}")
        get = _getter(tok.text)
        if self.is_word("in"):
            self.next()
            self.expect_punct("[")
            values: list[Any] = []
            while True:
                lit = self.next()
                if lit.kind != "lit":
                    raise _bad(f"IN takes a list of literals, found {lit.text!r}")
                values.append(lit.value)
                sep = self.next()
                if sep.kind == "punct" and sep.text == "]":
                    break
                if sep.kind != "punct" or sep.text != ",":
                    raise _bad(f"expected ',' or ']', found {sep.text!r}")
            preds = [_compare(get, "=", v) for v in values]
            strs = {v for v in values if isinstance(v, str)}
            if len(strs) == len(values):
                return lambda d: (v := get(d)).__class__ is str and v in strs
            return lambda d: any(p(d) for p in preds)
        op = self.next()
        if op.kind != "op":
            raise _bad(f"expected a comparison operator after {tok.text}, found {op.text!r}")
        lit = self.next()
        if lit.kind != "lit":
            raise _bad(f"expected a literal after {op.text}, found {lit.text!r}")
        return _compare(get, op.text, lit.value)


def compile_condition(condition: str) -> Predicate:
    """Compile a WHERE condition (also a job's ``queryCondition``)."""
    toks = _tokenize(condition)
    if not toks:
        raise _bad("empty condition")
    p = _Parser(toks)
    pred = p.condition()
    if p.peek() is not None:
        raise _bad(f"unexpected {p.peek().text!r} after the condition")  # type: ignore[union-attr]
    return pred


def compile_query(query: str) -> Predicate:
    """Compile ``SELECT * FROM devices [WHERE ...]``."""
    if not isinstance(query, str):
        raise _bad("the query must be a string")
    toks = _tokenize(query)
    p = _Parser(toks)
    p.expect_word("select")
    star = p.next()
    if star.kind != "punct" or star.text != "*":
        raise _bad("only SELECT * is supported")
    p.expect_word("from")
    src = p.next()
    if src.kind != "word" or src.text.lower() != "devices":
        raise _bad(f"only FROM devices is supported, found {src.text!r}")
    if p.peek() is None:
        return lambda d: True
    p.expect_word("where")
    pred = p.condition()
    if p.peek() is not None:
        raise _bad(f"unexpected {p.peek().text!r} after the condition")  # type: ignore[union-attr]
    return pred
