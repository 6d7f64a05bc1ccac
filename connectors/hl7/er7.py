"""Reading HL7v2 ER7 text: segments, fields, components, escape sequences.

hl7apy parses and validates each message (:mod:`connectors.hl7.parse`); values are read
here from the same text because hl7apy re-escapes formatting sequences such as ``\\.br\\``
in TX values. HL7 v2.5.1 §2.5 (message construction rules) and §2.7 (escape sequences).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX_RUN = re.compile(r"^X([0-9A-Fa-f]{2})+$")


@dataclass(frozen=True, slots=True)
class Encoding:
    """The delimiters declared in MSH-1 and MSH-2 (§2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, msh: str) -> Encoding:
        """Read the delimiters from the text of an MSH segment (``MSH|^~\\&|...``)."""
        if len(msh) < 8 or not msh.startswith("MSH"):
            raise ValueError("not an MSH segment")
        field = msh[3]
        chars = msh[4:].split(field, 1)[0]
        if len(chars) < 2 or field in chars or field.isalnum():
            raise ValueError("invalid encoding characters")
        padded = chars + "\x00" * (4 - len(chars))
        return cls(
            field=field,
            component=padded[0],
            repetition=padded[1],
            escape=padded[2],
            subcomponent=padded[3],
        )

    @property
    def msh2(self) -> str:
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"


def split_segments(text: str) -> list[str]:
    """Segments of a message; CR is the separator, LF and CRLF are tolerated."""
    normalised = text.replace("\r\n", "\r").replace("\n", "\r")
    return [segment for segment in normalised.split("\r") if segment.strip()]


def unescape(value: str, enc: Encoding) -> str:
    """Resolve escape sequences (§2.7): delimiters, ``.br`` line breaks, ``Xhh`` hex data.

    Highlighting (``\\H\\``, ``\\N\\``) and other formatting commands are dropped.
    """
    esc = enc.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        end = value.find(esc, i + 1) if ch == esc else -1
        if ch != esc or end < 0:
            out.append(ch)
            i += 1
            continue
        code = value[i + 1 : end]
        out.append(_escape_value(code, enc))
        i = end + 1
    return "".join(out)


def _escape_value(code: str, enc: Encoding) -> str:
    simple = {
        "F": enc.field,
        "S": enc.component,
        "T": enc.subcomponent,
        "R": enc.repetition,
        "E": enc.escape,
        ".br": "\n",
        ".sp": "\n",
    }
    if code in simple:
        return simple[code]
    if _HEX_RUN.match(code):
        return bytes.fromhex(code[1:]).decode("latin-1")
    return ""


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment; ``field(n)`` uses HL7 numbering (MSH-1 is the field separator)."""

    name: str
    fields: tuple[str, ...]
    enc: Encoding

    @classmethod
    def parse(cls, text: str, enc: Encoding) -> Segment:
        parts = text.split(enc.field)
        name = parts[0]
        # MSH-1 is the separator itself, MSH-2 the encoding characters.
        fields = (name, enc.field, *parts[1:]) if name == "MSH" else (name, *parts[1:])
        return cls(name=name, fields=fields, enc=enc)

    def raw(self, n: int) -> str:
        """Field ``n`` as sent (escaped, with repetitions and components)."""
        return self.fields[n] if n < len(self.fields) else ""

    def repetitions(self, n: int) -> list[str]:
        raw = self.raw(n)
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        return [rep for rep in raw.split(self.enc.repetition)] if raw else []

    def components(self, n: int, rep: int = 0) -> list[str]:
        """Components of repetition ``rep`` of field ``n``, unescaped (subcomponents kept)."""
        reps = self.repetitions(n)
        if rep >= len(reps):
            return []
        return [unescape(c, self.enc) for c in reps[rep].split(self.enc.component)]

    def component(self, n: int, c: int = 1, rep: int = 0) -> str:
        """Component ``c`` (1-based) of field ``n``; its first subcomponent, unescaped."""
        reps = self.repetitions(n)
        if rep >= len(reps):
            return ""
        comps = reps[rep].split(self.enc.component)
        if c > len(comps):
            return ""
        return unescape(comps[c - 1].split(self.enc.subcomponent)[0], self.enc).strip()

    def value(self, n: int) -> str:
        """Field ``n`` unescaped as one string (for ST/TX/FT values)."""
        return unescape(self.raw(n), self.enc)
