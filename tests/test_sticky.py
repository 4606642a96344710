"""
Tests for L{twisted_rp.pool.sticky}: cookie, application cookie, source address and user name
affinity.
"""

from __future__ import annotations

import base64
import calendar

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.interfaces import IStickiness
from twisted_rp.pool.backend import Backend, PickContext, StickyResponse
from twisted_rp.pool.sticky import (
    STICKINESS,
    AppCookieStickiness,
    CookieStickiness,
    SetCookie,
    SourceIPStickiness,
    UserStickiness,
    parse_set_cookie,
    request_cookie,
)

SECRET = b"0123456789abcdef0123456789abcdef"
WEB1 = Backend("web1", "10.0.0.1", 8080)
WEB2 = Backend("web2", "10.0.0.2", 8080)


class RecordingResponse(StickyResponse):
    """A response with headers: what the backend sent and what stickiness added."""

    def __init__(self, *set_cookies: str) -> None:
        self.backend_set_cookies = list(set_cookies)
        self.added: list[str] = []

    def header_values(self, name: str) -> list[str]:
        return list(self.backend_set_cookies) if name.lower() == "set-cookie" else []

    def set_cookie(self, value: str) -> None:
        self.added.append(value)


def http_context(cookie_header: str | None = None, client_ip: str = "192.0.2.1") -> PickContext:
    """The context the HTTP side builds for a request with this C{Cookie} field."""
    return PickContext("http", client_ip, cookie=lambda name: request_cookie(cookie_header, name))


def cookie_pair(set_cookie_value: str) -> str:
    """What a browser sends back for a C{Set-Cookie}: its C{name=value}."""
    return set_cookie_value.split(";", 1)[0]


class RequestCookieTests(SynchronousTestCase):
    def test_finds_one_of_several(self) -> None:
        header = "a=1; TRP_STICKY=xyz; b=2"
        self.assertEqual(request_cookie(header, "TRP_STICKY"), "xyz")
        self.assertEqual(request_cookie(header, "a"), "1")
        self.assertEqual(request_cookie(header, "b"), "2")

    def test_absent(self) -> None:
        self.assertIsNone(request_cookie("a=1; b=2", "c"))
        self.assertIsNone(request_cookie("", "c"))
        self.assertIsNone(request_cookie(None, "c"))

    def test_whitespace_around_names_and_values(self) -> None:
        self.assertEqual(request_cookie("a=1;b=2", "b"), "2")
        self.assertEqual(request_cookie("  a = 1 ;\tb =\t2  ", "b"), "2")

    def test_quoted_value_loses_its_quotes(self) -> None:
        self.assertEqual(request_cookie('a="quoted value"; b=2', "a"), "quoted value")
        self.assertEqual(request_cookie('a=""', "a"), "")
        self.assertEqual(request_cookie('a="', "a"), '"')

    def test_value_may_contain_equals(self) -> None:
        self.assertEqual(request_cookie("token=YWJj==; x=1", "token"), "YWJj==")

    def test_empty_value(self) -> None:
        self.assertEqual(request_cookie("a=; b=2", "a"), "")

    def test_names_are_exact_and_case_sensitive(self) -> None:
        self.assertIsNone(request_cookie("jsessionid=1", "JSESSIONID"))
        self.assertEqual(request_cookie("XJSESSIONID=1; JSESSIONID=2", "JSESSIONID"), "2")
        self.assertEqual(request_cookie("JSESSIONIDX=1; JSESSIONID=2", "JSESSIONID"), "2")

    def test_first_wins(self) -> None:
        self.assertEqual(request_cookie("a=specific; a=general", "a"), "specific")

    def test_pieces_without_equals_are_skipped(self) -> None:
        self.assertEqual(request_cookie("garbage; a; ;; a=1", "a"), "1")

    def test_comma_is_not_a_separator(self) -> None:
        self.assertEqual(request_cookie("a=1,b=2", "a"), "1,b=2")


def parsed(field_value: str) -> SetCookie:
    """C{field_value} parsed, which must succeed."""
    cookie = parse_set_cookie(field_value)
    assert cookie is not None, field_value
    return cookie


class ParseSetCookieTests(SynchronousTestCase):
    def test_name_value_and_attributes(self) -> None:
        cookie = parse_set_cookie("JSESSIONID=abc123; Path=/app; Secure; HttpOnly; Max-Age=60")
        self.assertEqual(cookie, SetCookie("JSESSIONID", "abc123", max_age=60))

    def test_without_attributes(self) -> None:
        self.assertEqual(parse_set_cookie(" sid = v "), SetCookie("sid", "v"))

    def test_not_a_cookie(self) -> None:
        self.assertIsNone(parse_set_cookie("no-equals-sign; Path=/"))
        self.assertIsNone(parse_set_cookie("=value"))
        self.assertIsNone(parse_set_cookie(""))

    def test_quoted_value(self) -> None:
        self.assertEqual(parsed('sid="abc"; Path=/').value, "abc")

    def test_attribute_names_are_case_insensitive(self) -> None:
        cookie = parse_set_cookie("sid=1; max-age=5; EXPIRES=Thu, 01 Jan 1970 00:00:10 GMT")
        self.assertEqual(cookie, SetCookie("sid", "1", max_age=5, expires=10.0))

    def test_invalid_max_age_is_ignored(self) -> None:
        for attribute in ("Max-Age=", "Max-Age=soon", "Max-Age=1.5", "Max-Age=+3", "Max-Age"):
            cookie = parse_set_cookie(f"sid=1; {attribute}")
            self.assertEqual(cookie, SetCookie("sid", "1"), attribute)

    def test_last_max_age_counts(self) -> None:
        self.assertEqual(parsed("sid=1; Max-Age=5; Max-Age=9").max_age, 9)

    def test_date_formats(self) -> None:
        expected = float(calendar.timegm((2015, 10, 21, 7, 28, 0)))
        for date in (
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed, 21-Oct-2015 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
            "21 october 2015 07:28:00",
        ):
            cookie = parsed(f"sid=1; Expires={date}")
            self.assertEqual(cookie.expires, expected, date)

    def test_two_digit_years(self) -> None:
        cookie = parsed("sid=1; Expires=Thu, 01-Jan-70 00:00:00 GMT")
        self.assertEqual(cookie.expires, 0.0)
        cookie = parsed("sid=1; Expires=Sat, 01-Jan-00 00:00:00 GMT")
        self.assertEqual(cookie.expires, float(calendar.timegm((2000, 1, 1, 0, 0, 0))))

    def test_invalid_dates_are_ignored(self) -> None:
        for date in (
            "tomorrow",
            "Wed, 31 Feb 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 25:28:00 GMT",
            "Wed, 21 Oct 1500 07:28:00 GMT",
            "Wed, 21 Oct 2015",
            "",
        ):
            self.assertIsNone(parsed(f"sid=1; Expires={date}").expires, date)

    def test_max_age_wins_over_expires(self) -> None:
        cookie = parsed("sid=1; Max-Age=100; Expires=Thu, 01 Jan 1970 00:00:01 GMT")
        self.assertEqual(cookie.deadline(now=50.0), 150.0)
        self.assertFalse(cookie.deletes(now=50.0))

    def test_deletes(self) -> None:
        self.assertTrue(SetCookie("sid", "", max_age=0).deletes(now=10.0))
        self.assertTrue(SetCookie("sid", "", max_age=-1).deletes(now=10.0))
        self.assertTrue(SetCookie("sid", "", expires=10.0).deletes(now=10.0))
        self.assertFalse(SetCookie("sid", "", expires=11.0).deletes(now=10.0))
        self.assertFalse(SetCookie("sid", "").deletes(now=10.0))


class CookieStickinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sticky = CookieStickiness(SECRET)

    def first_cookie(self, backend: Backend, sticky: CookieStickiness | None = None) -> str:
        """Pin a client without a cookie to C{backend}; return the C{Set-Cookie} value."""
        response = RecordingResponse()
        (sticky or self.sticky).pin(http_context(), backend, response)
        self.assertEqual(len(response.added), 1)
        return response.added[0]

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStickiness, self.sticky))
        self.assertFalse(self.sticky.strict)
        self.assertTrue(CookieStickiness(SECRET, strict=True).strict)

    def test_pins_and_finds_again(self) -> None:
        pair = cookie_pair(self.first_cookie(WEB2))
        self.assertTrue(pair.startswith("TRP_STICKY="))
        self.assertEqual(self.sticky.pinned(http_context(f"other=1; {pair}")), "web2")

    def test_no_cookie_no_pin(self) -> None:
        self.assertIsNone(self.sticky.pinned(http_context()))
        self.assertIsNone(self.sticky.pinned(http_context("TRP_STICKY=")))
        self.assertIsNone(self.sticky.pinned(PickContext("tcp", "192.0.2.1")))

    def test_default_attributes(self) -> None:
        set_cookie = self.first_cookie(WEB1)
        self.assertEqual(set_cookie.split("; ", 1)[1], "Path=/; HttpOnly; SameSite=Lax")

    def test_configured_attributes(self) -> None:
        sticky = CookieStickiness(
            SECRET,
            name="__Secure-route",
            path="/shop",
            max_age=3600,
            http_only=True,
            secure=True,
            same_site="strict",
        )
        set_cookie = self.first_cookie(WEB1, sticky)
        name_value, attributes = set_cookie.split("; ", 1)
        self.assertTrue(name_value.startswith("__Secure-route="))
        self.assertEqual(attributes, "Path=/shop; Max-Age=3600; HttpOnly; Secure; SameSite=Strict")

    def test_attributes_can_be_left_out(self) -> None:
        sticky = CookieStickiness(SECRET, http_only=False, same_site=None)
        self.assertEqual(self.first_cookie(WEB1, sticky).split("; ", 1)[1], "Path=/")

    def test_same_site_none(self) -> None:
        sticky = CookieStickiness(SECRET, secure=True, same_site="None")
        self.assertTrue(self.first_cookie(WEB1, sticky).endswith("; Secure; SameSite=None"))

    def test_value_is_a_plain_cookie_octet_string(self) -> None:
        value = cookie_pair(self.first_cookie(Backend("ünïcode name; x=1", "h", 1)))
        value = value.split("=", 1)[1]
        self.assertRegex(value, r"^[A-Za-z0-9_-]+$")

    def test_value_never_shows_name_or_address(self) -> None:
        dns_member = Backend("10.0.0.7:8080", "10.0.0.7", 8080)
        value = cookie_pair(self.first_cookie(dns_member)).split("=", 1)[1]
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        for secret_part in ("10.0.0.7", "8080"):
            self.assertNotIn(secret_part, value)
            self.assertNotIn(secret_part.encode(), raw)
        self.assertNotIn(base64.urlsafe_b64encode(b"10.0.0.7:8080").rstrip(b"=").decode(), value)
        pair = cookie_pair(self.first_cookie(dns_member))
        self.assertEqual(self.sticky.pinned(http_context(pair)), "10.0.0.7:8080")

    def test_set_only_when_needed(self) -> None:
        pair = cookie_pair(self.first_cookie(WEB1))
        response = RecordingResponse()
        self.sticky.pin(http_context(pair), WEB1, response)
        self.assertEqual(response.added, [])

    def test_repinned_to_another_backend(self) -> None:
        pair = cookie_pair(self.first_cookie(WEB1))
        response = RecordingResponse()
        # The pool sent this client to web2 (web1 went down): the cookie must follow.
        self.sticky.pin(http_context(pair), WEB2, response)
        self.assertEqual(len(response.added), 1)
        new_pair = cookie_pair(response.added[0])
        self.assertEqual(self.sticky.pinned(http_context(new_pair)), "web2")

    def tampered(self, pair: str, index: int) -> str:
        """C{pair} with one byte of its decoded value flipped."""
        name, value = pair.split("=", 1)
        raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        raw[index] ^= 0x01
        return f"{name}={base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"

    def test_tampered_signature_is_ignored(self) -> None:
        pair = cookie_pair(self.first_cookie(WEB1))
        # The first 16 bytes are AES-SIV's synthetic IV (the authentication tag).
        for index in (0, 7, 15):
            self.assertIsNone(self.sticky.pinned(http_context(self.tampered(pair, index))))

    def test_tampered_name_is_ignored(self) -> None:
        pair = cookie_pair(self.first_cookie(WEB1))
        for index in range(16, 16 + len("web1")):
            self.assertIsNone(self.sticky.pinned(http_context(self.tampered(pair, index))))

    def test_tampered_cookie_is_replaced(self) -> None:
        bad = self.tampered(cookie_pair(self.first_cookie(WEB1)), 17)
        response = RecordingResponse()
        self.sticky.pin(http_context(bad), WEB1, response)
        self.assertEqual(len(response.added), 1)

    def test_every_character_matters(self) -> None:
        name, value = cookie_pair(self.first_cookie(WEB1)).split("=", 1)
        for index, character in enumerate(value):
            replacement = "A" if character != "A" else "B"
            changed = value[:index] + replacement + value[index + 1 :]
            self.assertIsNone(self.sticky.pinned(http_context(f"{name}={changed}")), index)

    def test_only_the_canonical_spelling(self) -> None:
        # 20 bytes (16 of tag, 4 of name) take 27 base64 characters with 2 unused bits at the
        # end: a variant that differs only there decodes to the same bytes, and still is not
        # the value we set.
        value = cookie_pair(self.first_cookie(WEB1)).split("=", 1)[1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        variant = value[:-1] + alphabet[alphabet.index(value[-1]) ^ 1]
        decode = base64.urlsafe_b64decode
        self.assertEqual(decode(variant + "=="), decode(value + "=="))
        self.assertEqual(self.sticky.pinned(http_context(f"TRP_STICKY={value}")), "web1")
        self.assertIsNone(self.sticky.pinned(http_context(f"TRP_STICKY={variant}")))

    def test_malformed_values_are_ignored(self) -> None:
        value = cookie_pair(self.first_cookie(WEB1)).split("=", 1)[1]
        for bad in (
            value[:-1],
            value[:20],
            value + "A",
            value + "=",
            value.replace(value[5], "+"),
            "not base64!",
            "QQ",
            "A" * 5000,
        ):
            self.assertIsNone(self.sticky.pinned(http_context(f"TRP_STICKY={bad}")), bad)

    def test_other_secret_is_rejected(self) -> None:
        other = CookieStickiness(b"another secret of enough length!")
        pair = cookie_pair(self.first_cookie(WEB1, other))
        self.assertIsNone(self.sticky.pinned(http_context(pair)))

    def test_same_secret_is_shared(self) -> None:
        sibling = CookieStickiness(SECRET)
        pair = cookie_pair(self.first_cookie(WEB1, sibling))
        self.assertEqual(self.sticky.pinned(http_context(pair)), "web1")

    def test_bound_to_the_cookie_name(self) -> None:
        other_name = CookieStickiness(SECRET, name="OTHER")
        value = cookie_pair(self.first_cookie(WEB1, other_name)).split("=", 1)[1]
        self.assertIsNone(self.sticky.pinned(http_context(f"TRP_STICKY={value}")))

    def test_response_without_headers(self) -> None:
        self.sticky.pin(PickContext("ftp", "192.0.2.1"), WEB1, StickyResponse())

    def test_secret_not_in_repr(self) -> None:
        self.assertNotIn(SECRET.decode(), repr(self.sticky))
        self.assertNotIn(repr(SECRET), repr(self.sticky))

    def test_invalid_configuration(self) -> None:
        invalid: list[dict[str, object]] = [
            {"secret": b"short"},
            {"secret": SECRET, "name": "bad name"},
            {"secret": SECRET, "name": "semi;colon"},
            {"secret": SECRET, "name": ""},
            {"secret": SECRET, "path": "relative"},
            {"secret": SECRET, "path": "/a;Domain=evil"},
            {"secret": SECRET, "path": "/a\r\nX: y"},
            {"secret": SECRET, "max_age": 0},
            {"secret": SECRET, "same_site": "sometimes"},
            {"secret": SECRET, "same_site": "None"},
            {"secret": SECRET, "name": "__Secure-x"},
            {"secret": SECRET, "name": "__Host-x"},
            {"secret": SECRET, "name": "__Host-x", "secure": True, "path": "/a"},
        ]
        for options in invalid:
            self.assertRaises(ValueError, CookieStickiness, **options)
        self.assertRaises(TypeError, CookieStickiness, SECRET.decode())
        CookieStickiness(SECRET, name="__Host-x", secure=True)


class AppCookieStickinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.sticky = AppCookieStickiness(clock=self.clock)

    def learn(self, backend: Backend, *set_cookies: str, request_cookie: str | None = None) -> None:
        self.sticky.pin(http_context(request_cookie), backend, RecordingResponse(*set_cookies))

    def pinned(self, cookie_header: str | None) -> str | None:
        return self.sticky.pinned(http_context(cookie_header))

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStickiness, self.sticky))
        self.assertFalse(self.sticky.strict)
        self.assertTrue(AppCookieStickiness(strict=True).strict)

    def test_learns_and_finds_again(self) -> None:
        self.learn(WEB2, "JSESSIONID=abc123; Path=/; HttpOnly; Secure")
        self.assertEqual(self.pinned("theme=dark; JSESSIONID=abc123"), "web2")
        self.assertIsNone(self.pinned("JSESSIONID=other"))
        self.assertIsNone(self.pinned("theme=dark"))
        self.assertIsNone(self.pinned(None))

    def test_never_sets_cookies(self) -> None:
        response = RecordingResponse("JSESSIONID=abc123")
        self.sticky.pin(http_context(), WEB1, response)
        self.assertEqual(response.added, [])

    def test_configured_cookie_name(self) -> None:
        sticky = AppCookieStickiness("ASP.NET_SessionId", clock=self.clock)
        response = RecordingResponse("JSESSIONID=j1", "ASP.NET_SessionId=s1; path=/; HttpOnly")
        sticky.pin(http_context(), WEB1, response)
        self.assertEqual(sticky.pinned(http_context("ASP.NET_SessionId=s1")), "web1")
        self.assertIsNone(sticky.pinned(http_context("JSESSIONID=j1")))

    def test_several_set_cookies(self) -> None:
        self.learn(WEB1, "theme=dark", "JSESSIONID=a; Path=/a", "JSESSIONID=b; Path=/b")
        self.assertEqual(self.pinned("JSESSIONID=a"), "web1")
        self.assertEqual(self.pinned("JSESSIONID=b"), "web1")
        self.assertEqual(len(self.sticky), 2)

    def test_quoted_values(self) -> None:
        self.learn(WEB1, 'JSESSIONID="q1"; Path=/')
        self.assertEqual(self.pinned("JSESSIONID=q1"), "web1")
        self.assertEqual(self.pinned('JSESSIONID="q1"'), "web1")

    def test_clients_cannot_add_sessions(self) -> None:
        self.learn(WEB1, request_cookie="JSESSIONID=made-up")
        self.assertIsNone(self.pinned("JSESSIONID=made-up"))
        self.assertEqual(len(self.sticky), 0)

    def test_empty_session_is_not_learnt(self) -> None:
        self.learn(WEB1, "JSESSIONID=; Path=/")
        self.assertIsNone(self.pinned("JSESSIONID="))
        self.assertEqual(len(self.sticky), 0)

    def test_repinned_when_sent_elsewhere(self) -> None:
        self.learn(WEB1, "JSESSIONID=abc")
        # web1 went down and the pool sent the session to web2, which kept the id.
        self.learn(WEB2, request_cookie="JSESSIONID=abc")
        self.assertEqual(self.pinned("JSESSIONID=abc"), "web2")

    def test_new_session_from_another_backend(self) -> None:
        self.learn(WEB1, "JSESSIONID=old")
        self.learn(WEB2, "JSESSIONID=new", request_cookie="JSESSIONID=old")
        self.assertEqual(self.pinned("JSESSIONID=new"), "web2")

    def test_max_age_zero_deletes(self) -> None:
        self.learn(WEB1, "JSESSIONID=abc; Path=/")
        self.learn(WEB1, "JSESSIONID=abc; Path=/; Max-Age=0")
        self.assertIsNone(self.pinned("JSESSIONID=abc"))
        self.assertEqual(len(self.sticky), 0)

    def test_expired_expires_deletes(self) -> None:
        self.clock.advance(calendar.timegm((2024, 6, 1, 12, 0, 0)))
        self.learn(WEB1, "JSESSIONID=abc")
        self.learn(WEB1, "JSESSIONID=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/")
        self.assertIsNone(self.pinned("JSESSIONID=abc"))

    def test_future_expires_keeps(self) -> None:
        self.clock.advance(calendar.timegm((2024, 6, 1, 12, 0, 0)))
        self.learn(WEB1, "JSESSIONID=abc; Expires=Sat, 01 Jun 2024 12:30:00 GMT")
        self.assertEqual(self.pinned("JSESSIONID=abc"), "web1")
        # The browser drops the cookie at its expiry, so the entry goes then too, used or not.
        self.clock.advance(30 * 60)
        self.assertIsNone(self.pinned("JSESSIONID=abc"))

    def test_empty_deleting_value_ends_the_request_session(self) -> None:
        self.learn(WEB1, "JSESSIONID=abc")
        self.learn(WEB1, "JSESSIONID=; Max-Age=0", request_cookie="JSESSIONID=abc")
        self.assertIsNone(self.pinned("JSESSIONID=abc"))

    def test_max_age_bounds_the_entry(self) -> None:
        self.learn(WEB1, "JSESSIONID=abc; Max-Age=60")
        self.clock.advance(59)
        self.assertEqual(self.pinned("JSESSIONID=abc"), "web1")
        self.clock.advance(1)
        self.assertIsNone(self.pinned("JSESSIONID=abc"))

    def test_idle_expiry(self) -> None:
        sticky = AppCookieStickiness(expiry=100.0, clock=self.clock)
        sticky.pin(http_context(), WEB1, RecordingResponse("JSESSIONID=abc"))
        for _ in range(5):
            self.clock.advance(99)
            self.assertEqual(sticky.pinned(http_context("JSESSIONID=abc")), "web1")
        self.clock.advance(100)
        self.assertIsNone(sticky.pinned(http_context("JSESSIONID=abc")))

    def test_expired_entries_are_dropped_when_new_ones_come(self) -> None:
        sticky = AppCookieStickiness(expiry=100.0, clock=self.clock)
        for session in ("a", "b", "c"):
            sticky.pin(http_context(), WEB1, RecordingResponse(f"JSESSIONID={session}"))
        self.clock.advance(100)
        sticky.pin(http_context(), WEB1, RecordingResponse("JSESSIONID=d"))
        self.assertEqual(len(sticky), 1)

    def test_least_recently_used_is_evicted(self) -> None:
        sticky = AppCookieStickiness(max_entries=2, clock=self.clock)
        sticky.pin(http_context(), WEB1, RecordingResponse("JSESSIONID=a"))
        sticky.pin(http_context(), WEB2, RecordingResponse("JSESSIONID=b"))
        self.assertEqual(sticky.pinned(http_context("JSESSIONID=a")), "web1")
        sticky.pin(http_context(), WEB2, RecordingResponse("JSESSIONID=c"))
        self.assertEqual(len(sticky), 2)
        self.assertEqual(sticky.pinned(http_context("JSESSIONID=a")), "web1")
        self.assertIsNone(sticky.pinned(http_context("JSESSIONID=b")))
        self.assertEqual(sticky.pinned(http_context("JSESSIONID=c")), "web2")

    def test_invalid_configuration(self) -> None:
        self.assertRaises(ValueError, AppCookieStickiness, "bad name")
        self.assertRaises(ValueError, AppCookieStickiness, max_entries=0)
        self.assertRaises(ValueError, AppCookieStickiness, expiry=0)


class SourceIPStickinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.sticky = SourceIPStickiness(clock=self.clock)

    def context(self, client_ip: str) -> PickContext:
        return PickContext("tcp", client_ip)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStickiness, self.sticky))
        self.assertFalse(self.sticky.strict)
        self.assertTrue(SourceIPStickiness(strict=True).strict)

    def test_pins_and_finds_again(self) -> None:
        self.assertIsNone(self.sticky.pinned(self.context("192.0.2.1")))
        self.sticky.pin(self.context("192.0.2.1"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("192.0.2.1")), "web2")
        self.assertIsNone(self.sticky.pinned(self.context("192.0.2.2")))

    def test_shared_across_protocols(self) -> None:
        self.sticky.pin(PickContext("ftp", "192.0.2.1"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(http_context(client_ip="192.0.2.1")), "web2")

    def test_repin(self) -> None:
        self.sticky.pin(self.context("192.0.2.1"), WEB1, StickyResponse())
        self.sticky.pin(self.context("192.0.2.1"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("192.0.2.1")), "web2")
        self.assertEqual(len(self.sticky), 1)

    def test_ipv4_mapped_is_the_same_client(self) -> None:
        self.sticky.pin(self.context("::ffff:192.0.2.1"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("192.0.2.1")), "web2")
        self.sticky.pin(self.context("2001:db8:0::1"), WEB1, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("2001:db8::1")), "web1")

    def test_unknown_address(self) -> None:
        self.sticky.pin(self.context(""), WEB1, StickyResponse())
        self.assertIsNone(self.sticky.pinned(self.context("")))
        self.assertEqual(len(self.sticky), 0)
        self.sticky.pin(self.context("unix-socket"), WEB1, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("unix-socket")), "web1")

    def test_idle_expiry(self) -> None:
        sticky = SourceIPStickiness(expiry=60.0, clock=self.clock)
        sticky.pin(self.context("192.0.2.1"), WEB1, StickyResponse())
        self.clock.advance(59)
        self.assertEqual(sticky.pinned(self.context("192.0.2.1")), "web1")
        self.clock.advance(59)
        self.assertEqual(sticky.pinned(self.context("192.0.2.1")), "web1")
        self.clock.advance(60)
        self.assertIsNone(sticky.pinned(self.context("192.0.2.1")))

    def test_least_recently_used_is_evicted(self) -> None:
        sticky = SourceIPStickiness(max_entries=3, clock=self.clock)
        for number in range(1, 4):
            sticky.pin(self.context(f"192.0.2.{number}"), WEB1, StickyResponse())
        sticky.pinned(self.context("192.0.2.1"))
        sticky.pin(self.context("192.0.2.4"), WEB2, StickyResponse())
        self.assertEqual(len(sticky), 3)
        self.assertIsNone(sticky.pinned(self.context("192.0.2.2")))
        for number in (1, 3):
            self.assertEqual(sticky.pinned(self.context(f"192.0.2.{number}")), "web1")
        self.assertEqual(sticky.pinned(self.context("192.0.2.4")), "web2")

    def test_global_reactor_by_default(self) -> None:
        sticky = SourceIPStickiness()
        sticky.pin(self.context("192.0.2.1"), WEB1, StickyResponse())
        self.assertEqual(sticky.pinned(self.context("192.0.2.1")), "web1")

    def test_invalid_configuration(self) -> None:
        self.assertRaises(ValueError, SourceIPStickiness, expiry=-1)
        self.assertRaises(ValueError, SourceIPStickiness, max_entries=0)


class UserStickinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.sticky = UserStickiness(clock=self.clock)

    def context(self, user: str | None, client_ip: str = "192.0.2.1") -> PickContext:
        """What the FTP side asks the pool with after C{USER}."""
        return PickContext("ftp", client_ip, user=user)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStickiness, self.sticky))
        self.assertFalse(self.sticky.strict)
        self.assertTrue(UserStickiness(strict=True).strict)

    def test_defaults(self) -> None:
        sticky = UserStickiness()
        self.assertEqual((sticky.expiry, sticky.max_entries), (3600.0, 100_000))

    def test_pins_and_finds_again(self) -> None:
        self.assertIsNone(self.sticky.pinned(self.context("alice")))
        self.sticky.pin(self.context("alice"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("alice")), "web2")
        self.assertIsNone(self.sticky.pinned(self.context("bob")))

    def test_user_from_another_address(self) -> None:
        self.sticky.pin(self.context("alice", "192.0.2.1"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("alice", "198.51.100.7")), "web2")

    def test_users_from_one_address_are_apart(self) -> None:
        self.sticky.pin(self.context("alice"), WEB1, StickyResponse())
        self.sticky.pin(self.context("bob"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("alice")), "web1")
        self.assertEqual(self.sticky.pinned(self.context("bob")), "web2")

    def test_names_are_exact(self) -> None:
        self.sticky.pin(self.context("alice"), WEB1, StickyResponse())
        self.assertIsNone(self.sticky.pinned(self.context("Alice")))
        self.assertIsNone(self.sticky.pinned(self.context("alice ")))

    def test_any_protocol_that_sets_a_user(self) -> None:
        self.sticky.pin(self.context("alice"), WEB2, StickyResponse())
        self.assertEqual(
            self.sticky.pinned(PickContext("tcp", "203.0.113.9", user="alice")), "web2"
        )

    def test_without_a_user(self) -> None:
        for user in (None, ""):
            self.sticky.pin(self.context(user), WEB1, StickyResponse())
            self.assertIsNone(self.sticky.pinned(self.context(user)))
        self.sticky.pin(http_context(), WEB1, StickyResponse())
        self.assertIsNone(self.sticky.pinned(http_context()))
        self.assertEqual(len(self.sticky), 0)

    def test_repin(self) -> None:
        self.sticky.pin(self.context("alice"), WEB1, StickyResponse())
        self.sticky.pin(self.context("alice"), WEB2, StickyResponse())
        self.assertEqual(self.sticky.pinned(self.context("alice")), "web2")
        self.assertEqual(len(self.sticky), 1)

    def test_idle_expiry(self) -> None:
        sticky = UserStickiness(expiry=60.0, clock=self.clock)
        sticky.pin(self.context("alice"), WEB1, StickyResponse())
        self.clock.advance(59)
        self.assertEqual(sticky.pinned(self.context("alice")), "web1")
        self.clock.advance(59)
        self.assertEqual(sticky.pinned(self.context("alice")), "web1")
        self.clock.advance(60)
        self.assertIsNone(sticky.pinned(self.context("alice")))

    def test_least_recently_used_is_evicted(self) -> None:
        sticky = UserStickiness(max_entries=3, clock=self.clock)
        for name in ("u1", "u2", "u3"):
            sticky.pin(self.context(name), WEB1, StickyResponse())
        sticky.pinned(self.context("u1"))
        sticky.pin(self.context("u4"), WEB2, StickyResponse())
        self.assertEqual(len(sticky), 3)
        self.assertIsNone(sticky.pinned(self.context("u2")))
        for name in ("u1", "u3"):
            self.assertEqual(sticky.pinned(self.context(name)), "web1")
        self.assertEqual(sticky.pinned(self.context("u4")), "web2")

    def test_global_reactor_by_default(self) -> None:
        sticky = UserStickiness()
        sticky.pin(self.context("alice"), WEB1, StickyResponse())
        self.assertEqual(sticky.pinned(self.context("alice")), "web1")

    def test_invalid_configuration(self) -> None:
        self.assertRaises(ValueError, UserStickiness, expiry=0)
        self.assertRaises(ValueError, UserStickiness, max_entries=0)


class RegistryTests(SynchronousTestCase):
    def test_names(self) -> None:
        self.assertEqual(sorted(STICKINESS), ["app_cookie", "cookie", "source_ip", "user"])

    def test_each_builds_a_stickiness(self) -> None:
        clock = MemoryReactorClock()
        built = [
            STICKINESS["cookie"](secret=SECRET, name="route", strict=True),
            STICKINESS["app_cookie"](cookie="PHPSESSID", clock=clock),
            STICKINESS["source_ip"](expiry=10.0, clock=clock),
            STICKINESS["user"](expiry=10.0, max_entries=5, clock=clock, strict=True),
        ]
        for sticky in built:
            self.assertTrue(verifyObject(IStickiness, sticky))
