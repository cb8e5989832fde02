"""Shell arithmetic, as bash's ``$((...))``, ``((...))`` and ``for ((...))`` compute it: pure, no I/O.

Integers are 64-bit and wrap around as in bash (C's ``intmax_t``);
division truncates toward zero.  The operators, from the tightest::

    x++ x--   ++x --x   + - (unary)   ! ~   **   * / %   + -   << >>
    < <= > >=   == !=   &   ^   |   &&   ||   ?:   = += -= *= /= %= <<= >>= &= ^= |=   ,

Numbers are decimal, ``0x1f`` (hex), ``017`` (octal) or ``BASE#DIGITS``
(``2#101``, bases 2 to 64).  A variable may be named with or without ``$``;
an unset or empty one is 0, and a value that is not a number is itself
evaluated as an expression (``a=b; b=7; echo $((a+1))`` prints 8), as bash
does, at most :data:`MAX_RECURSION` deep.

The expression is evaluated while it is parsed, one token of lookahead, so
long chains (``1+1+...+1``) need no recursion; the branches ``&&``, ``||``
and ``?:`` do not take are parsed without effects (no assignment, no
division error), as in bash.  Every problem is an :class:`ArithError` whose
message reads as bash's (``1/0: division by 0 (error token is "0")``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from oneos.errors import OneOSError

#: How deeply variables may refer to one another (``a=b``, ``b=a`` must end).
MAX_RECURSION = 32
#: How deeply parentheses, unary operators and ``?:`` may nest in one expression.
MAX_NESTING = 64

_BITS = 64
_MODULUS = 1 << _BITS
_HALF = 1 << (_BITS - 1)

_TOKEN = re.compile(
    r"\s*(?:(?P<number>[0-9][0-9A-Za-z@_#]*)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><<=|>>=|\*\*|\+\+|--|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&^|]=|[-+*/%<>=!~&^|?:,()]))"
)
_BINARY = {
    "||": 1,
    "&&": 2,
    "|": 3,
    "^": 4,
    "&": 5,
    "==": 6,
    "!=": 6,
    "<": 7,
    "<=": 7,
    ">": 7,
    ">=": 7,
    "<<": 8,
    ">>": 8,
    "+": 9,
    "-": 9,
    "*": 10,
    "/": 10,
    "%": 10,
    "**": 11,
}
_ASSIGN = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "<<=", ">>=", "&=", "^=", "|="})
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ@_"


class ArithError(OneOSError):
    """An arithmetic expression cannot be evaluated; the message names it and the token, as bash's."""

    def __init__(self, expression: str, problem: str, token: str) -> None:
        super().__init__(f'{expression.strip()}: {problem} (error token is "{token}")')
        self.problem = problem


Getter = Callable[[str], "str | None"]
Setter = Callable[[str, str], None]


def wrap(value: int) -> int:
    """*value* as a signed 64-bit integer (what bash's arithmetic keeps)."""
    return ((value + _HALF) % _MODULUS) - _HALF


def evaluate(text: str, get: Getter, set_: Setter, depth: int = 0) -> int:
    """The value of the arithmetic expression *text* (0 when empty); variables read with *get*, assigned with *set_*."""
    return _Evaluator(text, get, set_, depth).run()


def number(text: str, expression: str | None = None) -> int:
    """A bash integer constant: ``42``, ``0x2a``, ``052``, ``16#2a``; ArithError if it is not one."""
    where = text if expression is None else expression
    word = text.strip()
    negative = word.startswith("-")
    if word[:1] in "+-":
        word = word[1:]
    if not word:
        raise ArithError(where, "operand expected", text)
    if "#" in word:
        base_text, _, digits = word.partition("#")
        if not base_text.isdigit() or not 2 <= int(base_text) <= 64:
            raise ArithError(where, "invalid arithmetic base", word)
        base = int(base_text)
    elif word[:2] in ("0x", "0X"):
        base, digits = 16, word[2:]
    elif word.startswith("0") and len(word) > 1:
        base, digits = 8, word[1:]
    else:
        base, digits = 10, word
    if not digits:
        raise ArithError(where, "invalid number", word)
    value = 0
    for c in digits:
        digit = _digit(c, base)
        if digit is None or digit >= base:
            raise ArithError(where, "value too great for base", word)
        value = value * base + digit
    return wrap(-value if negative else value)


def _digit(c: str, base: int) -> int | None:
    at = _DIGITS.find(c)
    if at < 0:
        return None
    if base <= 36 and at >= 36 and c.isalpha():
        return at - 26  # up to base 36 letters are case-blind: 'A' is 10, as 'a'
    return at


@dataclass
class _Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            tokens.append(_Token("end", "", pos))
            return tokens
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            raise ArithError(text, "syntax error: invalid arithmetic operator", text[pos:].strip())
        kind = match.lastgroup
        op, start = match.group(kind), match.start(kind)
        if op in ("++", "--") and not _names_a_variable(tokens, text, match.end()):
            tokens.append(_Token("op", op[0], start))  # '1--1' is 1 - -1: ++/-- only next to a variable, as bash
            tokens.append(_Token("op", op[1], start + 1))
        else:
            tokens.append(_Token(kind, op, start))
        pos = match.end()


def _names_a_variable(tokens: list[_Token], text: str, after: int) -> bool:
    """Whether a ``++``/``--`` follows a variable (``x++``) or comes before one (``++x``)."""
    if tokens and tokens[-1].kind == "name":
        return True
    rest = text[after:].lstrip()
    return bool(rest) and (rest[0].isalpha() or rest[0] == "_")


class _Evaluator:
    """Evaluates while parsing; ``skip`` > 0 inside a branch that is parsed but not evaluated."""

    def __init__(self, text: str, get: Getter, set_: Setter, depth: int) -> None:
        if depth > MAX_RECURSION:
            raise ArithError(text, "expression recursion level exceeded", text.strip())
        self.text = text
        self.get = get
        self.set = set_
        self.depth = depth
        self.tokens = _tokens(text)
        self.i = 0
        self.skip = 0
        self.nesting = 0

    # -- tokens ---------------------------------------------------------------
    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def is_op(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.text in ops

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def error(self, problem: str, token: _Token | None = None) -> ArithError:
        at = (token or self.token).position
        return ArithError(self.text, problem, self.text[at:].strip())

    def deeper(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.error("expression nested too deeply")

    # -- grammar ----------------------------------------------------------------
    def run(self) -> int:
        if self.token.kind == "end":
            return 0
        value = self.comma()
        if self.token.kind != "end":
            raise self.error("syntax error in expression")
        return value

    def comma(self) -> int:
        value = self.assignment()
        while self.is_op(","):
            self.advance()
            value = self.assignment()
        return value

    def assignment(self) -> int:
        token, after = self.token, self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
        if token.kind == "name" and after is not None and after.kind == "op" and after.text in _ASSIGN:
            self.advance()
            op = self.advance().text
            self.deeper()
            value = self.assignment()
            self.nesting -= 1
            if self.skip:
                return 0
            if op != "=":
                value = self.apply(op[:-1], self.variable(token), value, after)
            self.set(token.text, str(value))
            return value
        return self.conditional()

    def conditional(self) -> int:
        condition = self.binary(1)
        if not self.is_op("?"):
            return condition
        self.advance()
        self.deeper()
        if not condition:
            self.skip += 1
        first = self.comma()
        if not condition:
            self.skip -= 1
        if not self.is_op(":"):
            raise self.error("`:' expected for conditional expression")
        self.advance()
        if condition:
            self.skip += 1
        second = self.conditional()
        if condition:
            self.skip -= 1
        self.nesting -= 1
        return first if condition else second

    def binary(self, lowest: int) -> int:
        left = self.unary()
        while self.token.kind == "op" and _BINARY.get(self.token.text, 0) >= lowest:
            op_token = self.advance()
            op = op_token.text
            level = _BINARY[op]
            if op in ("&&", "||"):
                decided = (not left) if op == "&&" else bool(left)
                if decided:
                    self.skip += 1
                right = self.binary(level + 1)
                if decided:
                    self.skip -= 1
                left = int(bool(left) and bool(right)) if op == "&&" else int(bool(left) or bool(right))
                continue
            right = self.binary(level if op == "**" else level + 1)
            left = self.apply(op, left, right, op_token)
        return left

    def unary(self) -> int:
        token = self.token
        if token.kind == "op" and token.text in ("+", "-", "!", "~"):
            self.advance()
            self.deeper()
            value = self.unary()
            self.nesting -= 1
            if token.text == "-":
                return wrap(-value)
            if token.text == "!":
                return int(not value)
            if token.text == "~":
                return wrap(~value)
            return value
        if token.kind == "op" and token.text in ("++", "--"):
            self.advance()
            name = self.token
            if name.kind != "name":
                raise self.error(f"'{token.text}' needs a variable", name)
            self.advance()
            value = wrap(self.variable(name) + (1 if token.text == "++" else -1))
            if not self.skip:
                self.set(name.text, str(value))
            return value
        return self.primary()

    def primary(self) -> int:
        token = self.token
        if token.kind == "number":
            self.advance()
            return number(token.text, self.text)
        if token.kind == "name":
            self.advance()
            value = self.variable(token)
            if self.is_op("++", "--"):
                op = self.advance().text
                if not self.skip:
                    self.set(token.text, str(wrap(value + (1 if op == "++" else -1))))
            return value
        if self.is_op("("):
            self.advance()
            self.deeper()
            value = self.comma()
            self.nesting -= 1
            if not self.is_op(")"):
                raise self.error("missing ')'")
            self.advance()
            return value
        raise self.error("syntax error: operand expected")

    # -- values --------------------------------------------------------------------
    def variable(self, token: _Token) -> int:
        """A variable's value: 0 when unset or empty, its number, or its text evaluated as an expression."""
        if self.skip:
            return 0
        text = self.get(token.text)
        if text is None or not text.strip():
            return 0
        try:
            return number(text)
        except ArithError:
            return _Evaluator(text, self.get, self.set, self.depth + 1).run()

    def apply(self, op: str, left: int, right: int, token: _Token) -> int:
        if self.skip:
            return 0
        if op in ("/", "%"):
            if right == 0:
                raise ArithError(self.text, "division by 0", self.text[token.position + len(op) :].strip())
            quotient = abs(left) // abs(right)
            if (left < 0) != (right < 0):
                quotient = -quotient
            return wrap(quotient) if op == "/" else wrap(left - quotient * right)
        if op == "**":
            if right < 0:
                raise ArithError(self.text, "exponent less than 0", self.text[token.position + 2 :].strip())
            return wrap(pow(left, right, _MODULUS))
        if op == "+":
            return wrap(left + right)
        if op == "-":
            return wrap(left - right)
        if op == "*":
            return wrap(left * right)
        if op == "<<":
            return wrap(left << (right & (_BITS - 1)))
        if op == ">>":
            return left >> (right & (_BITS - 1))
        if op == "&":
            return left & right
        if op == "|":
            return left | right
        if op == "^":
            return left ^ right
        comparisons = {
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
            "==": left == right,
            "!=": left != right,
        }
        return int(comparisons[op])
