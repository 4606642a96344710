"""
Tests for L{twisted_rp.http.accesslog}.
"""

from __future__ import annotations

import json
import os

from attrs import evolve
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.http.accesslog import AccessLog, access_log_from_settings
from twisted_rp.http.message import AccessRecord
from twisted_rp.interfaces import IAccessLog
from twisted_rp.settings import LogSettings

RECORD = AccessRecord(
    client_ip="192.0.2.7",
    method="GET",
    target="/index.html?q=1",
    version="HTTP/1.1",
    status=200,
    bytes_sent=612,
    referer="https://example.test/",
    user_agent="curl/8.5.0",
    host="www.example.test",
    request_id="5f0c2a",
    backend="web-1",
    pool="web",
    started=971185536.25,
    duration=0.01234,
    backend_time=0.0101,
    user="alice",
)


def collecting(format: str) -> tuple[AccessLog, list[str]]:
    lines: list[str] = []
    return AccessLog(format, lines.append), lines


class CombinedFormatTests(SynchronousTestCase):
    """
    The combined format is what Apache and nginx write, plus the proxy's own fields.
    """

    def test_interface(self) -> None:
        log, _ = collecting("combined")
        self.assertTrue(verifyObject(IAccessLog, log))

    def test_full_record(self) -> None:
        log, lines = collecting("combined")
        log.log(RECORD)
        self.assertEqual(
            lines,
            [
                '192.0.2.7 - alice [10/Oct/2000:13:45:36 +0000] "GET /index.html?q=1 HTTP/1.1" '
                '200 612 "https://example.test/" "curl/8.5.0" '
                "rid=5f0c2a backend=web-1 pool=web rt=0.012 bt=0.010"
            ],
        )

    def test_missing_values_are_dashes(self) -> None:
        """
        A request that never reached a backend, from an anonymous client without Referer or
        User-Agent, has C{-} wherever a value is missing.
        """
        record = evolve(
            RECORD,
            status=503,
            bytes_sent=0,
            referer="",
            user_agent="",
            backend="",
            backend_time=None,
            user=None,
        )
        log, lines = collecting("combined")
        log.log(record)
        self.assertEqual(
            lines,
            [
                '192.0.2.7 - - [10/Oct/2000:13:45:36 +0000] "GET /index.html?q=1 HTTP/1.1" '
                '503 0 "-" "-" rid=5f0c2a backend=- pool=web rt=0.012 bt=-'
            ],
        )

    def test_unparsed_request(self) -> None:
        """
        A request rejected before its request line was understood logs C{"-"} as the line.
        """
        record = evolve(RECORD, method="", target="", version="", status=400)
        log, lines = collecting("combined")
        log.log(record)
        self.assertIn(' "-" 400 ', lines[0])

    def test_client_cannot_forge_fields(self) -> None:
        """
        Quotes, backslashes and control characters sent by the client are escaped, so one
        request is always one line with the expected fields.
        """
        record = evolve(
            RECORD,
            target='/a"b\\c',
            user_agent='evil"\n127.0.0.1 - - [x] "GET / HTTP/1.1" 200',
            user="bob smith",
        )
        log, lines = collecting("combined")
        log.log(record)
        (line,) = lines
        self.assertNotIn("\n", line)
        self.assertIn(r'"GET /a\"b\\c HTTP/1.1"', line)
        self.assertIn(r'"evil\"\x0A127.0.0.1 - - [x] \"GET / HTTP/1.1\" 200"', line)
        self.assertIn(r" - bob\x20smith [", line)


class JSONFormatTests(SynchronousTestCase):
    """
    The JSON format carries every field of the record, one object per line.
    """

    def test_full_record(self) -> None:
        log, lines = collecting("json")
        log.log(RECORD)
        self.assertEqual(
            lines,
            [
                '{"client_ip":"192.0.2.7","method":"GET","target":"/index.html?q=1",'
                '"version":"HTTP/1.1","status":200,"bytes_sent":612,'
                '"referer":"https://example.test/","user_agent":"curl/8.5.0",'
                '"host":"www.example.test","request_id":"5f0c2a","backend":"web-1",'
                '"pool":"web","started":971185536.25,"duration":0.01234,'
                '"backend_time":0.0101,"user":"alice","tls_version":null,"tls_cipher":null}'
            ],
        )

    def test_control_characters_stay_on_one_line(self) -> None:
        log, lines = collecting("json")
        log.log(evolve(RECORD, user_agent="a\nb", backend_time=None, user=None))
        (line,) = lines
        self.assertNotIn("\n", line)
        decoded = json.loads(line)
        self.assertEqual(decoded["user_agent"], "a\nb")
        self.assertIsNone(decoded["backend_time"])
        self.assertIsNone(decoded["user"])

    def test_unknown_format(self) -> None:
        error = self.assertRaises(ValueError, AccessLog, "apache", print)
        self.assertIn("'apache'", str(error))


class FileWriterTests(SynchronousTestCase):
    """
    L{AccessLog.to_file} appends lines to a file and rotates it by size.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "access.log")

    def read(self, path: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    def test_appends_lines(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("earlier line\n")
        log = AccessLog.to_file("json", self.path)
        self.addCleanup(log.close)
        log.log(RECORD)
        log.log(evolve(RECORD, request_id="second"))
        lines = self.read(self.path)
        self.assertEqual(lines[0], "earlier line")
        self.assertEqual(
            [json.loads(line)["request_id"] for line in lines[1:]], ["5f0c2a", "second"]
        )

    def test_rotation(self) -> None:
        """
        Once the file holds C{rotate_length} bytes, the next line starts a new file and the
        old one is kept as C{.1}, then C{.2}; rotated files beyond C{max_rotated_files} are
        deleted.
        """
        log = AccessLog.to_file("combined", self.path, rotate_length=1, max_rotated_files=2)
        self.addCleanup(log.close)
        for request_id in ("one", "two", "three", "four"):
            log.log(evolve(RECORD, request_id=request_id))

        def ids(path: str) -> list[str]:
            return [line.split(" rid=")[1].split(" ")[0] for line in self.read(path)]

        self.assertEqual(ids(self.path), ["four"])
        self.assertEqual(ids(self.path + ".1"), ["three"])
        self.assertEqual(ids(self.path + ".2"), ["two"])
        self.assertFalse(os.path.exists(self.path + ".3"))

    def test_rotation_counts_bytes(self) -> None:
        """
        The size limit is in bytes, so non-ASCII text rotates when its encoded size is reached.
        """
        log = AccessLog.to_file("json", self.path, rotate_length=200)
        self.addCleanup(log.close)
        log.log(evolve(RECORD, user="é" * 100))
        log.log(RECORD)
        self.assertEqual(len(self.read(self.path)), 1)
        self.assertTrue(os.path.exists(self.path + ".1"))


class LoggerWriterTests(SynchronousTestCase):
    """
    L{AccessLog.to_logger} emits one info event per request.
    """

    def test_emits_events(self) -> None:
        events: list[dict[str, object]] = []
        log = AccessLog.to_logger("combined", Logger(namespace="test", observer=events.append))
        log.log(RECORD)
        (event,) = events
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(formatEvent(event), collecting_line("combined"))

    def test_default_namespace(self) -> None:
        """
        Without a logger, events go to the global log in the C{twisted_rp.access} namespace.
        """
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        AccessLog.to_logger("json").log(RECORD)
        access_events = [e for e in events if e.get("log_namespace") == "twisted_rp.access"]
        self.assertEqual(len(access_events), 1)
        self.assertEqual(json.loads(formatEvent(access_events[0]))["pool"], "web")


def collecting_line(format: str) -> str:
    log, lines = collecting(format)
    log.log(RECORD)
    return lines[0]


class FromSettingsTests(SynchronousTestCase):
    """
    L{access_log_from_settings} follows the C{[log]} section.
    """

    def test_off(self) -> None:
        self.assertIsNone(access_log_from_settings(LogSettings(access="off")))

    def test_file(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "a.log")
        log = access_log_from_settings(LogSettings(access="json", access_file=path))
        assert log is not None
        self.addCleanup(log.close)
        log.log(RECORD)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.read())["request_id"], "5f0c2a")

    def test_twistd_log(self) -> None:
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        log = access_log_from_settings(LogSettings(access="combined"))
        assert log is not None
        log.log(RECORD)
        access_events = [e for e in events if e.get("log_namespace") == "twisted_rp.access"]
        self.assertEqual([formatEvent(e) for e in access_events], [collecting_line("combined")])
