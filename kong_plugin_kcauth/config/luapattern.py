"""Lua patterns, as Kong's schema `match` validators run them (`string.find(value, pattern)`),
translated to Python regular expressions over bytes so the plugin enforces the very patterns it
hands Kong.

Supported: anchors `^` and `$`, `.`, the classes `%a %c %d %g %l %p %s %u %w %x` and their
complements (C locale), `%` escapes, sets `[...]` (ranges, classes, `^` negation, a leading `]`),
and the quantifiers `* + - ?`. Captures, `%b` and `%f` raise ValueError: no config pattern uses
them. The set logic follows lstrlib.c (`classEnd`, `matchbracketclass`) byte for byte.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

_CLASSES: dict[str, Callable[[int], bool]] = {
    "a": lambda b: chr(b).isascii() and chr(b).isalpha(),
    "c": lambda b: b < 32 or b == 127,
    "d": lambda b: 48 <= b <= 57,
    "g": lambda b: 33 <= b <= 126,
    "l": lambda b: 97 <= b <= 122,
    "p": lambda b: 33 <= b <= 126 and not chr(b).isalnum(),
    "s": lambda b: b in (9, 10, 11, 12, 13, 32),
    "u": lambda b: 65 <= b <= 90,
    "w": lambda b: chr(b).isascii() and chr(b).isalnum(),
    "x": lambda b: chr(b) in "0123456789abcdefABCDEF",
}


def _class_match(letter: int, b: int) -> bool:
    """lstrlib.c match_class: a class letter (upper case = complement), or the letter itself."""
    test = _CLASSES.get(chr(letter).lower())
    if test is None:
        return letter == b
    return test(b) != chr(letter).isupper()


def _set_bytes(pattern: bytes, start: int, end: int) -> frozenset[int]:
    """The bytes a set `pattern[start] == '['` .. `pattern[end] == ']'` matches."""
    negate = pattern[start + 1] == ord("^")
    first = start + 1 if negate else start

    def member(b: int) -> bool:
        p = first
        while True:
            p += 1
            if p >= end:
                return False
            if pattern[p] == ord("%"):
                p += 1
                if _class_match(pattern[p], b):
                    return True
            elif p + 2 < end and pattern[p + 1] == ord("-"):
                if pattern[p] <= b <= pattern[p + 2]:
                    return True
                p += 2
            elif pattern[p] == b:
                return True

    return frozenset(b for b in range(256) if member(b) != negate)


def _set_end(pattern: bytes, p: int) -> int:
    """lstrlib.c classEnd for a set: the index of its closing `]` (p is just after `[`)."""
    if p < len(pattern) and pattern[p] == ord("^"):
        p += 1
    while True:  # the first character is always part of the set, even `]`
        if p >= len(pattern):
            raise ValueError("malformed pattern (missing ']')")
        c = pattern[p]
        p += 1
        if c == ord("%"):
            p += 1
        if p < len(pattern) and pattern[p] == ord("]"):
            return p


def _regex_set(members: frozenset[int]) -> bytes:
    if not members:
        return rb"(?!)"
    return b"[" + b"".join(re.escape(bytes([b])) for b in sorted(members)) + b"]"


@functools.cache
def compile_pattern(pattern: str) -> re.Pattern[bytes]:
    src = pattern.encode("utf-8")
    out = []
    i = 0
    if src.startswith(b"^"):
        out.append(rb"\A")
        i = 1
    while i < len(src):
        c = src[i]
        if c == ord("$") and i == len(src) - 1:
            out.append(rb"\Z")
            break
        if c in b"()":
            raise ValueError("captures are not supported")
        if c == ord("%"):
            if i + 1 >= len(src):
                raise ValueError("malformed pattern (ends with '%')")
            letter = src[i + 1]
            if letter in b"bf" or chr(letter).isdigit():
                raise ValueError(f"%{chr(letter)} is not supported")
            atom = _regex_set(frozenset(b for b in range(256) if _class_match(letter, b)))
            i += 2
        elif c == ord("["):
            end = _set_end(src, i + 1)
            atom = _regex_set(_set_bytes(src, i, end))
            i = end + 1
        elif c == ord("."):
            atom = rb"[\x00-\xff]"
            i += 1
        else:
            atom = re.escape(bytes([c]))
            i += 1
        if i < len(src) and src[i] in b"*+?-":
            atom += {ord("*"): b"*", ord("+"): b"+", ord("?"): b"?", ord("-"): b"*?"}[src[i]]
            i += 1
        out.append(atom)
    return re.compile(b"".join(out))


def find(value: str, pattern: str) -> bool:
    """Lua's `value:find(pattern)` is not nil."""
    return compile_pattern(pattern).search(value.encode("utf-8", "surrogatepass")) is not None
