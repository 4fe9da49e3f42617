"""PII detection and redaction: each rule's positives and hard negatives, the placeholders,
deep redaction of structures, and floors on the labelled set (eval/guardrails.jsonl).

Key-like strings are assembled at run time, so this file holds none for secret scanners.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from services.common.pii import (
    ENTITIES,
    Finding,
    find_pii,
    iban_ok,
    luhn_ok,
    redact,
    redact_value,
)

ROOT = Path(__file__).resolve().parents[2]

AWS_KEY = "AKIA" + "Q7ZT" * 4
GITHUB_TOKEN = "ghp_" + "aZ9" * 12
OPENAI_KEY = "sk-" + "proj-" + "Xy12" * 10
LLMOPS_KEY = "sk-" + "llmops-" + "Rk9_pQ2-" * 4
SLACK_TOKEN = "xoxb-" + "1234567890-" + "AbCdEfGhIjKl"
GOOGLE_KEY = "AIza" + "Sy" + "Zz9_" * 8 + "x"
STRIPE_KEY = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
JWT = "eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0" + ".dozjgNryP4J3jVmNHl0w5N"
PEM = (
    "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx7\nq9Zz\n-----END RSA PRIVATE KEY-----"
)


def found(text: str, entity: str | None = None) -> list[str]:
    """The text of each finding (of one entity, if named)."""
    return [text[f.start : f.end] for f in find_pii(text) if entity in (None, f.entity)]


# -- positives, per entity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "entity", "match"),
    [
        ("Mail jane.doe@example.com about it", "email", "jane.doe@example.com"),
        ("cc: support+billing@acme-corp.co.uk.", "email", "support+billing@acme-corp.co.uk"),
        ('"Bob" <BOB.MARTIN@Corp.Example.ORG>', "email", "BOB.MARTIN@Corp.Example.ORG"),
        ("mailto:alice@example.net", "email", "alice@example.net"),
        ("Call +1 415 555 2671 now", "phone", "+1 415 555 2671"),
        ("London: +44 20 7946 0958.", "phone", "+44 20 7946 0958"),
        ("Tel +44 (0)161 496 0000", "phone", "+44 (0)161 496 0000"),
        ("Tokyo +81-3-1234-5678", "phone", "+81-3-1234-5678"),
        ("desk (415) 555-0132 today", "phone", "(415) 555-0132"),
        ("or 212-555-0199.", "phone", "212-555-0199"),
        ("Phone: 415.555.0147", "phone", "415.555.0147"),
        ("Support 020 7946 0321, 9 to 5", "phone", "020 7946 0321"),
        ("portable : 06 12 34 56 78", "phone", "06 12 34 56 78"),
        ("Telefon 030/12345678", "phone", "030/12345678"),
        ("phone number: 4155550188", "phone", "4155550188"),
        ("card 4111 1111 1111 1111, exp 12/27", "credit_card", "4111 1111 1111 1111"),
        ("mc 5555-5555-5555-4444 ok", "credit_card", "5555-5555-5555-4444"),
        ("amex 3782 822463 10005.", "credit_card", "3782 822463 10005"),
        ("test 4242424242424242 paid", "credit_card", "4242424242424242"),
        ("IBAN DE89 3704 0044 0532 0130 00 thanks", "iban", "DE89 3704 0044 0532 0130 00"),
        ("to GB29NWBK60161331926819.", "iban", "GB29NWBK60161331926819"),
        ("FR14 2004 1010 0505 0001 3M02 606 REF", "iban", "FR14 2004 1010 0505 0001 3M02 606"),
        ("from 203.0.113.42 blocked", "ip_address", "203.0.113.42"),
        ("connect 10.20.30.40:5432", "ip_address", "10.20.30.40"),
        ("host 2001:db8:85a3::8a2e:370:7334 down", "ip_address", "2001:db8:85a3::8a2e:370:7334"),
        ("[2606:4700:4700::1111]:443", "ip_address", "2606:4700:4700::1111"),
        ("mapped ::ffff:198.51.100.99 seen", "ip_address", "::ffff:198.51.100.99"),
        (f"key {OPENAI_KEY} fails", "secret", OPENAI_KEY),
        (f"Authorization: Bearer {LLMOPS_KEY}", "secret", LLMOPS_KEY),
        (f"token {GITHUB_TOKEN} leaked", "secret", GITHUB_TOKEN),
        (f"id={AWS_KEY}", "secret", AWS_KEY),
        (f"SLACK={SLACK_TOKEN}", "secret", SLACK_TOKEN),
        (f"maps {GOOGLE_KEY}", "secret", GOOGLE_KEY),
        (f"stripe {STRIPE_KEY}", "secret", STRIPE_KEY),
        (f"Bearer {JWT}", "secret", JWT),
        (f"key:\n{PEM}\nend", "secret", PEM),
        ("password=" + "hunter2 in .env", "secret", "hunter2"),
        ("DB_PASSWORD: " + "'S3cure!Pass'", "secret", "S3cure!Pass"),
        ('{"api_key": ' + '"pq7rs8tu9vw0"}', "secret", "pq7rs8tu9vw0"),
        ("postgresql://app:" + "s3cr3tpw@db.internal/app", "secret", "s3cr3tpw"),
    ],
)
def test_each_rule_finds_its_entity(text: str, entity: str, match: str) -> None:
    assert found(text, entity) == [match]


# -- hard negatives -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # emails
        "Use the @property decorator and @staticmethod.",
        "npm install @types/node@20.11.5",
        "The retina assets are logo@2x.png and logo@3x.png.",
        "root@localhost sends the cron mail.",
        "Follow us @llmops for updates.",
        # phones: dates, versions, ISBNs, times, prices, short numbers, order numbers
        "Python 3.11.2 fixed 3.11.1.",
        "On 2024-03-15 at 14:30:00 UTC.",
        "Invoice dated 15.03.2024, due 14.04.2024.",
        "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2",
        "Order #100234987 shipped.",
        "From $1,299.99 to $1,099.00.",
        "Set timeout to 30000 ms and retries to 5.",
        "ZIP 94105-1234.",
        "The release window is 01/02/2025 through 01/16/2025.",
        "chmod 0755 the script",
        # cards: Luhn failures, no issuer, repeated digits, irregular groups
        "Card 4111 1111 1111 1112 was rejected.",
        "Tracking 1234 5678 9012 3456.",
        "Reference 0000 0000 0000 0000.",
        "Timestamp 1716239022123456 in microseconds.",
        "Order number 4539 1488 0343 6468 9 is delayed.",
        # IBANs: bad check digits, unknown country, wrong length
        "IBAN DE89 3704 0044 0532 0130 01 bounced.",
        "GB00 NWBK 6016 1331 9268 19 is not valid.",
        "SKU DE12AB34CD56EF78GH90 out of stock.",
        # IPs: versions, loopback, unspecified, masks, slices, times, C++ scopes, MACs
        "pip 23.3.1 and Python 3.11.2",
        "Listening on 127.0.0.1:8000 and [::1]:8000.",
        "Bind to 0.0.0.0 in the container; mask 255.255.255.0.",
        "version 1.0.0.1 and section 1.2.3.4",
        "Octets 256.1.1.1 are invalid.",
        "a[::2] and a[1::2]",
        "std::vector<int>::iterator it;",
        "at 12:30:45",
        "MAC 00:1A:2B:3C:4D:5E",
        # secrets: type annotations, references, placeholders, masked values, prose
        "def connect(host: str, password: str | None = None) -> Conn:",
        "max_tokens: 256 and token_count = 1532",
        "Set OPENAI_API_KEY=${OPENAI_API_KEY} in compose.",
        "password: <your-password-here>",
        "secret: {{ .Values.db.secret }}",
        "password: ********",
        "Authorization: Bearer <token>",
        "sk-learn is not a package; scikit-learn is.",
        "The task-management-system-for-large-teams page.",
        "if password == expected: return True",
        "secret_name: prod/db/credentials",
    ],
)
def test_hard_negatives_find_nothing(text: str) -> None:
    assert find_pii(text) == []


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("378282246310005")
    de = "DE89 3704 0044 0532 0130 00".replace(" ", "")
    assert iban_ok(de) and not iban_ok(de[:-1] + "1")
    assert not iban_ok(de[:-1])  # one character short for Germany
    assert iban_ok("MT84MALT011000012345MTLCAST001S")


# -- redaction ------------------------------------------------------------------------------------


def test_placeholders_keep_the_text_usable() -> None:
    text, findings = redact("Mail jane@example.com about it")
    assert text == "Mail [EMAIL] about it"
    assert findings == [Finding("email", 5, 21)]
    mixed = (
        "I'm Ana (ana@example.com, +34 612 345 678), card 4111 1111 1111 1111, "
        "IBAN GB82 WEST 1234 5698 7654 32, from 203.0.113.9, "
        f"key {AWS_KEY}, password=" + "hunter2."
    )
    out, findings = redact(mixed)
    assert out == (
        "I'm Ana ([EMAIL], [PHONE]), card [CREDIT_CARD], IBAN [IBAN], from [IP_ADDRESS], "
        "key [SECRET], password=[SECRET]."
    )
    assert [f.entity for f in findings] == [
        "email", "phone", "credit_card", "iban", "ip_address", "secret", "secret"
    ]  # fmt: skip
    starts = [f.start for f in findings]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))
    # The secret keeps its name: the reader still knows what was there.
    assert redact("Authorization: Bearer " + JWT)[0] == "Authorization: Bearer [SECRET]"


def test_overlaps_resolve_to_one_finding() -> None:
    # The URL's password, not an email "s3cr3tpw@db.example.com".
    text = "postgresql://app:" + "s3cr3tpw@db.example.com:5432/app"
    assert [f.entity for f in find_pii(text)] == ["secret"]
    # A card number assigned to a key named like a secret: one finding.
    assert len(find_pii("api_key=" + "4111111111111111")) == 1


def test_entities_can_be_chosen() -> None:
    text = "jane@example.com from 203.0.113.9"
    assert [f.entity for f in find_pii(text, ["ip_address"])] == ["ip_address"]
    assert redact(text, ("email",))[0] == "[EMAIL] from 203.0.113.9"
    assert find_pii(text, ()) == []
    with pytest.raises(ValueError, match="unknown PII entities"):
        find_pii(text, ["ssn"])
    assert set(ENTITIES) == {"email", "phone", "credit_card", "iban", "ip_address", "secret"}


def test_empty_and_clean_text() -> None:
    assert find_pii("") == [] and redact("") == ("", [])
    clean = "Kubernetes 1.29 removed the v1beta1 API; set RAG_TOP_K=4 for the demo."
    assert redact(clean) == (clean, [])


def test_redact_value_goes_deep_and_leaves_keys_and_other_values() -> None:
    value: dict[str, Any] = {
        "jane@example.com": "key kept",
        "messages": [
            {"role": "user", "content": "I am jane@example.com"},
            {"role": "assistant", "content": ["call +44 20 7946 0958", 3]},
        ],
        "pair": ("203.0.113.9", None),
        "n": 4111111111111111,
        "ok": True,
    }
    out = redact_value(value)
    assert out == {
        "jane@example.com": "key kept",
        "messages": [
            {"role": "user", "content": "I am [EMAIL]"},
            {"role": "assistant", "content": ["call [PHONE]", 3]},
        ],
        "pair": ("[IP_ADDRESS]", None),
        "n": 4111111111111111,  # not a string: left alone
        "ok": True,
    }
    assert value["messages"][0]["content"] == "I am jane@example.com"  # the input is untouched
    clean = "nothing here"
    assert redact_value(clean) is clean
    assert redact_value(None) is None and redact_value(2.5) == 2.5


# -- the labelled set -----------------------------------------------------------------------------


def load_quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "guardrails_quality", ROOT / "eval" / "guardrails_quality.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Measured on eval/guardrails.jsonl (see eval/guardrails_quality.py), minus a margin.
FLOORS = {
    "email": (0.9, 0.85),
    "phone": (0.9, 0.8),
    "credit_card": (0.95, 0.9),
    "iban": (0.95, 0.9),
    "ip_address": (0.9, 0.9),
    "secret": (0.9, 0.85),
}


def test_labelled_set_precision_and_recall_floors() -> None:
    quality = load_quality()
    rows = quality.load(ROOT / "eval" / "guardrails.jsonl")
    assert len(rows) >= 150
    counts, errors = quality.score(rows)
    for entity, (min_precision, min_recall) in FLOORS.items():
        c = counts[entity]
        assert c["support"] >= 10, entity  # positives for every entity
        precision = c["tp"] / max(1, c["tp"] + c["fp"])
        recall = c["tp"] / max(1, c["tp"] + c["fn"])
        assert precision >= min_precision and recall >= min_recall, (entity, errors)
    # Hard negatives for every entity: texts without it that a careless pattern would match.
    negatives = {e: sum(e not in row["pii"] for row in rows) for e in ENTITIES}
    assert min(negatives.values()) >= 100, negatives
