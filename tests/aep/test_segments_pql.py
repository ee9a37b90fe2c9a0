"""The PQL subset (profiles/pql.py) on its own: what matches, and what is refused with a message
that names the unsupported part. No backend."""

from __future__ import annotations

import time

import pytest

from userlens.profiles.pql import PqlError, compile_expression, parse

NOW = int(time.time() * 1000)
DAY = 86_400_000
PROFILE = {"person": {"name": {"firstName": "Jane", "lastName": "Doe"}, "age": 30, "vip": True}, "homeAddress": {"country": "US"}, "birthDate": "1990-05-17"}
EVENTS = [
    {"eventType": "commerce.purchases", "timestamp": NOW - DAY, "commerce": {"order": {"priceTotal": 120.5}}},
    {"eventType": "commerce.purchases", "timestamp": NOW - 10 * DAY},
    {"eventType": "web.webpagedetails.pageViews", "timestamp": "2020-01-01T00:00:00Z"},
]


@pytest.mark.parametrize(
    "pql, expected",
    [
        ('person.name.firstName = "Jane"', True),
        ('person.name.firstName != "Jane"', False),
        ("person.age > 18 and person.age <= 30", True),
        ("person.age < 18 or person.vip = true", True),
        ('homeAddress.country in ["CA", "US"]', True),
        ('homeAddress.country.in(["CA", "FR"])', False),
        ('not (homeAddress.country = "FR")', True),
        ('person.name.firstName.contains("an")', True),
        ('person.name.firstName.startsWith("ja")', False),
        ('person.name.firstName.startsWith("ja", false)', True),
        ('person.name.lastName.endsWith("oe")', True),
        ('person.name.firstName.equals("JANE", false)', True),
        ("person.name.middleName.exists()", False),
        ("person.name.middleName.isNull()", True),
        ("person.age.isNotNull()", True),
        ('profile.person.name.firstName = "Jane"', True),
        ("birthDate < date(2000, 1, 1)", True),
        ("person.missing > 3", False),
        ("not person.missing > 3", True),
        ('person.age = "30"', False),  # a string never equals a number
        ('select X from xEvent where X.eventType = "commerce.purchases"', True),
        ('select X from xEvent where X.eventType = "commerce.purchases" and X.timestamp occurs <= 2 days before now', True),
        ('select X from xEvent where X.eventType = "web.webpagedetails.pageViews" and X.timestamp occurs < 30 days before now', False),
        ('(select X from xEvent where X.eventType = "commerce.purchases").count() >= 2', True),
        ('(select X from xEvent where X.eventType = "commerce.purchases").count() > 2', False),
        ("select X from xEvent where X.commerce.order.priceTotal > 100", True),
        ("xEvent.count() = 3", True),
        ('person.age >= 18 and (select X from xEvent where X.timestamp occurs <= 1 week before now)', True),
    ],
)
def test_matches(pql, expected):
    c = parse(pql)
    assert c.matches(PROFILE, EVENTS, NOW) is expected
    assert c.uses_events == ("xEvent" in pql)


@pytest.mark.parametrize(
    "pql, named",
    [
        ('chain(xEvent, timestamp, [A: WHAT(eventType.equals("x", false))])', "'chain'"),
        ('person.name.firstName.like("J%")', "'like'"),
        ("person.age + 1 > 2", "'+'"),
        ('person.name.firstName.upperCase() = "JANE"', "'upperCase'"),
        ("person.age = today", "'today'"),
        ('select X from segments where X.id = "a"', "'segments'"),
        ('select X from xEvent where X.timestamp occurs <= 7 days after now', "'after'"),
        ('xEvent.forall(X.eventType = "a")', "xEvent"),
        ("person.age", "person.age"),
        ('person.name = ', "literal"),
        ("", "empty"),
    ],
)
def test_refused_with_the_part_named(pql, named):
    with pytest.raises(PqlError) as exc:
        parse(pql)
    assert named in str(exc.value)


def test_expression_object():
    assert compile_expression({"type": "PQL", "format": "pql/text", "value": "person.age > 1"}).matches(PROFILE, [], NOW)
    with pytest.raises(PqlError, match="pql/json"):
        compile_expression({"type": "PQL", "format": "pql/json", "value": "{}"})
    with pytest.raises(PqlError, match="expression"):
        compile_expression(None)
