"""PII and secrets in free text: found by position, and redacted to readable placeholders.

It runs on the proxy's hot path (every request and answer), in every JSON log line and in
dataset exports, so each detector is guarded by a cheap substring or character test and only
the few candidates a regex finds are validated in Python: the Luhn check for cards, mod 97 and
the country's length for IBANs, :mod:`ipaddress` for IPs. Validation is what keeps order
numbers, dates, versions and ISBNs out: a pattern alone matches them.

What is knowingly left out: phone numbers written with no separator and no "phone"-like word
before them (indistinguishable from ids), IBANs in lowercase, emails without a dot in the domain
(``root@localhost``) or spelled out ("jane at example dot com"), passwords in prose ("my
password is hunter2": only ``key = value`` and ``key: value`` forms), and loopback,
unspecified, multicast and reserved IPs (the same for everybody).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

ENTITIES: tuple[str, ...] = ("email", "phone", "credit_card", "iban", "ip_address", "secret")

PLACEHOLDERS: dict[str, str] = {name: f"[{name.upper()}]" for name in ENTITIES}

# Two findings at one start, of one length: the entity earlier here wins.
_PRIORITY = {name: n for n, name in enumerate(("secret", "email", "iban", "credit_card",
                                               "ip_address", "phone"))}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str
    start: int
    end: int


# -- email ---------------------------------------------------------------------------------------

_LOCAL_REVERSED = re.compile(r"[A-Za-z0-9._%+\-]{1,65}")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})(?![\w\-]|\.\w)"
)
# "icon@2x.png" is a file name: TLDs that are file extensions, not domains.
_FILE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tiff", "pdf"})
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _emails(text: str) -> Iterator[Finding]:
    """From each "@": the local part backwards, the domain forwards."""
    at = text.find("@")
    while at != -1:
        found = _email_at(text, at)
        if found is not None:
            yield found
        at = text.find("@", at + 1)


def _email_at(text: str, at: int) -> Finding | None:
    local = _LOCAL_REVERSED.match(text[max(0, at - 65) : at][::-1])
    if local is None or local.end() > 64:
        return None
    start = at - local.end()
    while start < at and text[start] not in _ALNUM:
        start += 1  # "...john@" or "-john@": the address starts at its first letter or digit
    if start == at:
        return None
    domain = _DOMAIN.match(text, at + 1)
    if domain is None or domain.group(1).lower() in _FILE_TLDS:
        return None
    scheme = text.rfind("://", max(0, start - 256), start)
    if scheme != -1 and not any(c.isspace() or c == "/" for c in text[scheme + 3 : start]):
        return None  # a URL's user and password before its host (see _secrets)
    return Finding("email", start, domain.end())


# -- credit cards ----------------------------------------------------------------------------------

# 13-19 digits, in groups separated by single spaces or dashes (or none).
_CARD = re.compile(r"(?<![\w.,+\-/])\d(?:[ \-]?\d){12,18}(?![\w/]|[.,\-]\d)")
_GROUP_SEP = re.compile(r"[ \-]")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every card number carries (ISO/IEC 7812)."""
    total = 0
    for n, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if n % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_brand_ok(digits: str) -> bool:
    """Issuer ranges of the card networks: a 16-digit id that passes Luhn (1 in 10 do) is not a
    card unless it starts like one."""
    n = len(digits)
    first = digits[0]
    if first == "4":  # Visa
        return n in (13, 16, 19)
    if first == "5":  # Mastercard 51-55, Maestro 50, 56-58
        return n == 16 if "51" <= digits[:2] <= "55" else 12 <= n <= 19
    if first == "2":  # Mastercard 2221-2720
        return n == 16 and "2221" <= digits[:4] <= "2720"
    if first == "3":  # Amex 34/37, JCB 35, Diners 30/36/38/39
        two = digits[:2]
        if two in ("34", "37"):
            return n == 15
        return two in ("30", "35", "36", "38", "39") and 14 <= n <= 19
    if first == "6":  # Discover, UnionPay, Maestro
        return 16 <= n <= 19
    return False


def _cards(text: str, start: int, end: int) -> Iterator[Finding]:
    for m in _CARD.finditer(text, start, end):
        raw = m.group()
        digits = raw.replace(" ", "").replace("-", "")
        if not _card_brand_ok(digits) or not luhn_ok(digits) or len(set(digits)) == 1:
            continue  # 0000 0000 0000 0000 passes Luhn
        # One kind of separator, in groups of 3 or more (4-4-4-4, 4-6-5), or none at all.
        if " " in raw and "-" in raw:
            continue
        if raw != digits and min(len(g) for g in _GROUP_SEP.split(raw)) < 3:
            continue
        yield Finding("credit_card", m.start(), m.end())


# -- IBAN ----------------------------------------------------------------------------------------

# Lengths from the SWIFT IBAN registry (release 2024), for the countries that use one.
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
# Country, check digits, then the BBAN in groups of up to 4 with single spaces (or none).
# No lookbehind: a pattern starting with a character class is searched for quickly.
_IBAN = re.compile(r"([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){10,30})")
_IBAN_MAX = 34 + 8  # characters, spaces included


def iban_ok(compact: str) -> bool:
    """ISO 13616: the country's length and the mod-97 check of the rearranged number."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _ibans(text: str, start: int, end: int) -> Iterator[Finding]:
    """IBANs around a run of digits (every BBAN has one): from up to an IBAN's length before
    it, to up to an IBAN's length after it starts."""
    for m in _IBAN.finditer(text, max(0, start - _IBAN_MAX), min(len(text), start + _IBAN_MAX)):
        length = _IBAN_LENGTHS.get(m.group(1))
        if length is None or (m.start() and text[m.start() - 1].isalnum()):
            continue
        # The regex runs on into the next uppercase word or number: cut at the country's length.
        need = length - 4
        stop = m.start(3)
        taken = 0
        for ch in m.group(3):
            stop += 1
            if ch != " ":
                taken += 1
                if taken == need:
                    break
        if taken < need or stop <= start:
            continue
        if stop < len(text) and text[stop].isalnum():
            continue  # runs on into a longer word: not this IBAN
        if iban_ok(text[m.start() : stop].replace(" ", "")):
            yield Finding("iban", m.start(), stop)


# -- IP addresses --------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.\-])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w\-]|\.\d)")
# Candidates only: ipaddress decides. Hex groups and colons, an embedded IPv4 tail allowed.
_IPV6 = re.compile(
    r"(?<![\w:.\-])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|" + _OCTET + r"(?:\." + _OCTET
    + r"){3})?(?:%[0-9A-Za-z]+)?(?![\w:\-]|\.\w)"
)  # fmt: skip
_VERSIONISH = re.compile(r"(?:\b(?:version|release|build|section|ver|rev|v)\.?|[=<>~]=|§)\s*$")


def _personal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Addresses that are the same for everybody (loopback, 0.0.0.0, masks in 240/4,
    multicast) say nothing about a person or a host."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:198.51.100.9: in ::/8, which is "reserved"
    return not (
        address.is_loopback or address.is_unspecified or address.is_reserved
        or address.is_multicast
    )  # fmt: skip


def _ipv4s(text: str, start: int, end: int) -> Iterator[Finding]:
    for m in _IPV4.finditer(text, start, end):
        if _VERSIONISH.search(text[max(0, m.start() - 12) : m.start()].lower()):
            continue  # "version 1.0.0.1", "section 1.2.3.4"
        if _personal(ipaddress.IPv4Address(m.group())):
            yield Finding("ip_address", m.start(), m.end())


def _ipv6s(text: str) -> Iterator[Finding]:
    """Around each "::" (most IPv6 addresses are written with one), or over the whole text
    when it has the seven colons of a full address."""
    if "::" in text:
        windows = []
        at = text.find("::")
        while at != -1:
            windows.append((max(0, at - 40), min(len(text), at + 50)))
            at = text.find("::", at + 2)
    elif text.count(":") >= 7:
        windows = [(0, len(text))]
    else:
        return
    for start, end in windows:
        for m in _IPV6.finditer(text, start, end):
            if m.end() == end and end < len(text):
                continue  # cut by the window: its real end is further on (or it is not one)
            cand = m.group()
            if sum(c not in ":." for c in cand.split("%")[0]) < 4:
                continue  # a[1::2], "::1": slices and loopback
            try:
                address = ipaddress.IPv6Address(cand)
            except ValueError:
                continue
            if _personal(address):
                yield Finding("ip_address", m.start(), m.end())


# -- phone numbers ---------------------------------------------------------------------------------

_SEP = r"(?:[ \-.]|\s?/\s?)"
# +CC then groups; the national part may have one parenthesised group, "(0)" included.
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ \-.]?\(\d{1,4}\))?(?:" + _SEP + r"?\d{1,5}){1,6}(?![\w]|[.\-]\d)"
)
# North America: (415) 555-2671, 415-555-2671, 415.555.2671, 415 555 2671.
_PHONE_NANP = re.compile(
    r"(?<![\w+.\-/])(?:\([2-9]\d{2}\)\s?|[2-9]\d{2}[ \-.])[2-9]\d{2}[ \-.]\d{4}(?![\w]|[.\-/]\d)"
)
# Trunk-prefixed national numbers (UK, FR, DE, ...): 020 7946 0958, 06 12 34 56 78, 030/901820.
_PHONE_TRUNK = re.compile(
    r"(?<![\w+.\-/:])\(?0\d{1,4}\)?" + _SEP + r"\d{2,8}(?:" + _SEP + r"\d{2,4}){0,4}"
    r"(?![\w]|[.\-/:]\d)"
)
# A bare run of digits is a phone number only right after a word that says so.
_PHONE_BARE = re.compile(r"(?<![\w+.\-/])\+?\d{9,14}(?![\w]|[.\-/]\d)")
_PHONE_WORD = re.compile(
    r"\b(?:phone|tel|telephone|mobile|cell|cellphone|fax|call|whatsapp|sms|text)\b"
)
_DATE = re.compile(r"\d{4}[\-./]\d{1,2}[\-./]\d{1,2}|\d{1,2}[\-./]\d{1,2}[\-./](?:\d{4}|\d{2})")


def _phones(text: str, start: int, end: int, digits: int) -> Iterator[Finding]:
    if "+" in text[start:end]:
        for m in _PHONE_INTL.finditer(text, start, end):
            if 8 <= _digit_count(m.group()) <= 15:
                yield Finding("phone", m.start(), m.end())
    if digits >= 10:
        for m in _PHONE_NANP.finditer(text, start, end):
            yield Finding("phone", m.start(), m.end())
    if "0" in text[start:end]:
        for m in _PHONE_TRUNK.finditer(text, start, end):
            cand = m.group()
            if not 9 <= _digit_count(cand) <= 12 or _DATE.fullmatch(cand):
                continue
            if "isbn" in text[max(0, m.start() - 8) : m.start()].lower():
                continue
            yield Finding("phone", m.start(), m.end())
    for m in _PHONE_BARE.finditer(text, start, end):
        if _PHONE_WORD.search(text[max(0, m.start() - 30) : m.start()].lower()):
            yield Finding("phone", m.start(), m.end())


# -- numbers: cards, IBANs, IPv4, phones -----------------------------------------------------------

# Every one of those has a run of at least 7 digits and separators: found in one pass, and only
# those runs are looked at closely.
_NUMERIC_RUN = re.compile(r"[0-9+(][0-9 \-./()+]{5,}[0-9]")
_NOT_DIGIT = re.compile(r"\D")


def _digit_count(s: str) -> int:
    return len(s) - len(_NOT_DIGIT.findall(s))


def _numbers(text: str, wanted: Collection[str]) -> Iterator[Finding]:
    for run in _NUMERIC_RUN.finditer(text):
        start, end = run.span()
        digits = _digit_count(run.group())
        if digits < 4:
            continue
        # One more character: the patterns' lookaheads see what follows the run.
        stop = min(len(text), end + 1)
        if "iban" in wanted:
            yield from _ibans(text, start, stop)
        if "credit_card" in wanted and digits >= 13:
            yield from _cards(text, start, stop)
        if "ip_address" in wanted and "." in run.group():
            yield from _ipv4s(text, start, stop)
        if "phone" in wanted and digits >= 8:
            yield from _phones(text, start, stop, digits)


# -- secrets -------------------------------------------------------------------------------------

# Each pattern starts with a literal, so the regex engine looks for it as str.find would; the
# character before must not be a word character or a dash (checked in Python: a lookbehind
# first would cost a step at every position of the text).
# OpenAI (sk-, sk-proj-, ...) and this platform's own virtual keys (sk-llmops-...).
_OPENAI = re.compile(r"sk-[A-Za-z0-9_\-]{20,}")
_TOKENS: tuple[re.Pattern[str], ...] = (
    _OPENAI,
    re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"github_pat_[A-Za-z0-9_]{30,}"),
    re.compile(r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    re.compile(r"xox[abprs]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{35}"),
    re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
    re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
    ),
)
# Stripe: sk_live_, rk_live_, sk_test_, rk_test_ (found from "k_", the s or r checked after).
_STRIPE = re.compile(r"k_(?:live|test)_[0-9A-Za-z]{16,}")
_WORDISH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# Only the token is redacted: "Authorization: Bearer [SECRET]" still says what it was.
_BEARER = re.compile(r"\s+([A-Za-z0-9\-._~+/]{20,}=*)")
# key = value, key: value: the key ends in one of these (DB_PASSWORD, OPENAI_API_KEY,
# client_secret, access_token); max_tokens or secret_name end otherwise and do not count.
_KEY_ENDINGS = (
    "password", "passwd", "passphrase", "pwd", "secret", "token", "credential", "credentials",
    "api_key", "api-key", "apikey", "access_key", "access-key", "accesskey", "secret_key",
    "secret-key", "private_key", "private-key", "signing_key", "encryption_key", "master_key",
)  # fmt: skip
# The key before a separator, read backwards: optional quote and blanks, then the name.
_KEY_REVERSED = re.compile(r"[ \t]*[\"']?([A-Za-z0-9_.\-]{1,80})")
_VALUE = re.compile(
    r"[ \t]*(?:\"([^\"\n]{1,256})\"|'([^'\n]{1,256})'|([^\s\"',;&<>()\[\]{}]{1,256}))"
)
_NOT_A_VALUE = frozenset(
    {
        "str", "string", "int", "bool", "bytes", "none", "null", "nil", "true", "false",
        "required", "optional", "undefined", "secretstr", "any", "object", "list", "dict",
        "redacted", "hidden", "masked", "yes", "no", "env", "see", "the", "your", "a", "an",
    }
)  # fmt: skip
# A URL's password: after the scheme and the user name (possibly empty), before the host.
_URL_PASSWORD = re.compile(r"[^/\s:@]*:([^/\s@]+)@")
# An unquoted value that is code, not a literal: settings.db.password, os.environ.get(...).
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _value_is_secret(value: str, sep: str, quoted: bool) -> bool:
    low = value.lower().strip()
    if len(low) < 3 or low in _NOT_A_VALUE:
        return False
    if low[0] in "$%{<[*" or low.startswith(("os.", "env.", "getenv", "settings.", "self.")):
        return False  # a reference (${DB_PASSWORD}, {{ secret }}, <your-key>), not the value
    if set(low) <= {"*", "x", ".", "-", "_"}:
        return False  # already masked
    if sep == ":" and not quoted:
        # Prose ("Password: required", "token: a string") reads like this too: a value there
        # needs a digit or a symbol, or length.
        return len(low) >= 8 or any(not c.isalpha() for c in low)
    return True


def _occurrences(text: str, needle: str) -> Iterator[int]:
    at = text.find(needle)
    while at != -1:
        yield at
        at = text.find(needle, at + 1)


def _secrets(text: str) -> Iterator[Finding]:
    for pattern in _TOKENS:
        for m in pattern.finditer(text):
            start = m.start()
            if start and text[start - 1] in _WORDISH:
                continue
            if pattern is _OPENAI and not any(c.isdigit() or c.isupper() for c in m.group()):
                continue  # sk-some-long-hyphenated-words: not a key
            yield Finding("secret", start, m.end())
    for m in _STRIPE.finditer(text):
        start = m.start() - 1
        if start >= 0 and text[start] in "sr" and (start == 0 or text[start - 1] not in _WORDISH):
            yield Finding("secret", start, m.end())
    if "earer" in text:
        for at in _occurrences(text.lower(), "bearer"):
            token = _BEARER.match(text, at + 6)
            if token is not None:
                yield Finding("secret", token.start(1), token.end(1))
    for sep in ("=", ":"):
        for at in _occurrences(text, sep):
            yield from _assignment(text, at)


def _assignment(text: str, at: int) -> Iterator[Finding]:
    """``key = value``, ``key: value``, ``key => value`` at the separator ``text[at]``; and a
    URL's password at "://"."""
    after = at + 1
    sep = text[at]
    if sep == ":":
        if text.startswith("//", after):
            m = _URL_PASSWORD.match(text, at + 3)
            if m is not None:
                yield Finding("secret", m.start(1), m.end(1))
            return
    else:
        if text.startswith(">", after):
            after += 1  # =>
        elif text.startswith("=", after) or (at and text[at - 1] in "=!<>:+-*/"):
            return  # ==, !=, <=, :=, +=: a comparison or an operation, not an assignment
    key = _KEY_REVERSED.match(text[max(0, at - 84) : at][::-1])
    if key is None or not key.group(1)[::-1].lower().endswith(_KEY_ENDINGS):
        return
    m = _VALUE.match(text, after)
    if m is None:
        return
    group = 1 if m.group(1) is not None else 2 if m.group(2) is not None else 3
    value = m.group(group)
    if group == 3:
        if text.startswith(("(", "["), m.end(group)) or _DOTTED_NAME.fullmatch(value):
            return  # password = getpass.getpass(...), token = request.headers[...]
        value = value.rstrip(".")  # "password=hunter2." ends a sentence
    if value and _value_is_secret(value, sep, group != 3):
        yield Finding("secret", m.start(group), m.start(group) + len(value))


# -- the API -------------------------------------------------------------------------------------

_NUMERIC = frozenset({"phone", "credit_card", "iban", "ip_address"})
_ALL = frozenset(ENTITIES)


def find_pii(text: str, entities: Collection[str] = ENTITIES) -> list[Finding]:
    """Every finding of the named entities, sorted by position, none overlapping (of two that
    overlap, the one starting first wins; at one start, the longer)."""
    wanted: Collection[str] = _ALL if entities is ENTITIES else frozenset(entities)
    unknown = set(wanted) - _PRIORITY.keys() if wanted is not _ALL else ()
    if unknown:
        raise ValueError(f"unknown PII entities {sorted(unknown)}; known: {', '.join(ENTITIES)}")
    if not text:
        return []
    found: list[Finding] = []
    if "email" in wanted and "@" in text:
        found.extend(_emails(text))
    if "secret" in wanted:
        found.extend(_secrets(text))
    if not _NUMERIC.isdisjoint(wanted):
        found.extend(_numbers(text, wanted))
    if "ip_address" in wanted:
        found.extend(_ipv6s(text))
    if len(found) < 2:
        return found
    found.sort(key=lambda f: (f.start, f.start - f.end, _PRIORITY[f.entity]))
    out = [found[0]]
    for f in found[1:]:
        if f.start >= out[-1].end:
            out.append(f)
    return out


def redact(text: str, entities: Collection[str] = ENTITIES) -> tuple[str, list[Finding]]:
    """``text`` with each finding replaced by its placeholder (``[EMAIL]``, ``[SECRET]``...),
    and the findings (positions in the original text)."""
    findings = find_pii(text, entities)
    if not findings:
        return text, findings
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(PLACEHOLDERS[f.entity])
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), findings


def redact_value(value: Any) -> Any:
    """``value`` with every string in it redacted, through dicts, lists and tuples (keys are
    left as they are); other values are returned unchanged, and so are strings with nothing to
    redact (the same objects)."""
    if isinstance(value, str):
        return redact(value)[0]
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    return value
