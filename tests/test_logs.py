"""
Tests for the JSON log observer (L{twisted_rp.logs}) and for rotating the access log file.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.proxyproc import TwistdProcess
from tests.test_service import TWO_LISTENERS, config_from, factory_of
from twisted_rp.config import ConfigError
from twisted_rp.http.accesslog import AccessLog, AccessLogSwitch
from twisted_rp.http.message import AccessRecord
from twisted_rp.logs import json_observer, json_record
from twisted_rp.service import build_service

RECORD = AccessRecord(
    "127.0.0.1", "GET", "/", "HTTP/1.1", 200, 2, "", "", "h", "rid", "web-1", "web", 0.0, 0.1, 0.1
)


class JSONObserverTests(SynchronousTestCase):
    """
    L{json_observer} writes one JSON object per event and line.
    """

    def emit(self) -> list[dict[str, object]]:
        out = io.StringIO()
        observer = json_observer(out)
        verifyObject(ILogObserver, observer)
        publisher = LogPublisher(observer)
        log = Logger(namespace="twisted_rp.pool.web", observer=publisher)
        log.warn(
            "pool {pool}: backend {backend} ({address}): {reason}",
            pool="web",
            backend="web-2",
            address="10.0.0.2:8000",
            reason="3 failed checks",
        )
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("while probing {backend}", Failure(), backend=object())
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def test_fields(self) -> None:
        """
        Time, level, namespace and the formatted message, then the event's own fields, so
        that a log tool can filter on them.
        """
        first, _ = self.emit()
        self.assertEqual(
            {k: v for k, v in first.items() if k != "time"},
            {
                "level": "warn",
                "namespace": "twisted_rp.pool.web",
                "message": "pool web: backend web-2 (10.0.0.2:8000): 3 failed checks",
                "pool": "web",
                "backend": "web-2",
                "address": "10.0.0.2:8000",
                "reason": "3 failed checks",
            },
        )
        self.assertRegex(str(first["time"]), r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")

    def test_failure(self) -> None:
        """A failure gives its traceback; values JSON cannot hold are given as their repr."""
        _, second = self.emit()
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", str(second["traceback"]))
        self.assertTrue(str(second["backend"]).startswith("<object object at"))

    def test_no_reserved_field_replaced(self) -> None:
        """An event field named like a record key does not replace it."""
        record = json_record(
            {"log_format": "hi", "log_namespace": "n", "log_time": 0.0, "message": "x"}
        )
        self.assertEqual((record["message"], record["time"]), ("hi", "1970-01-01T00:00:00.000Z"))

    def test_default_output(self) -> None:
        """
        Without an argument (as C{twistd --logger} calls it) it writes to the standard
        output as it was when made, which twistd later replaces.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = json_observer()
        self.patch(sys, "stdout", io.StringIO())
        observer({"log_format": "hello", "log_namespace": "t", "log_time": 1.0})
        self.assertEqual(json.loads(out.getvalue())["message"], "hello")


class AccessLogRotationTests(SynchronousTestCase):
    """
    The access log file rotates by size and on demand (SIGUSR1), starts again when moved away
    (logrotate), and a reload changes it under the listeners.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "access.log")

    def lines(self, path: str) -> int:
        with open(path, encoding="utf-8") as file:
            return len(file.read().splitlines())

    def test_by_size(self) -> None:
        log = AccessLog.to_file("json", self.path, rotate_length=1000, max_rotated_files=2)
        for _ in range(40):
            log.log(RECORD)
        log.close()
        self.assertEqual(
            sorted(os.listdir(self.directory)), ["access.log", "access.log.1", "access.log.2"]
        )

    def test_rotate(self) -> None:
        """Rotating renames the file C{.1} and goes on in a new one, as twistd's log does."""
        log = AccessLog.to_file("json", self.path, rotate_length=0)
        log.log(RECORD)
        log.rotate()
        log.log(RECORD)
        log.log(RECORD)
        log.close()
        self.assertEqual((self.lines(self.path + ".1"), self.lines(self.path)), (1, 2))

    def test_moved_away(self) -> None:
        """
        A file something else renamed (logrotate) is not rotated again: rotating or
        reopening starts a new file at the path.
        """
        for how in ("rotate", "reopen"):
            log = AccessLog.to_file("json", self.path)
            log.log(RECORD)
            os.rename(self.path, self.path + ".old")
            log.log(RECORD)
            getattr(log, how)()
            log.log(RECORD)
            log.close()
            self.assertEqual((self.lines(self.path + ".old"), self.lines(self.path)), (2, 1))
            self.assertFalse(os.path.exists(self.path + ".1"))
            os.remove(self.path)
        # Reopening a file still in place changes nothing.
        log = AccessLog.to_file("json", self.path)
        log.log(RECORD)
        log.reopen()
        log.log(RECORD)
        log.close()
        self.assertEqual(self.lines(self.path), 2)

    def test_switch(self) -> None:
        first = AccessLog.to_file("json", self.path)
        second_path = self.path + "-2"
        switch = AccessLogSwitch(first)
        switch.log(RECORD)
        switch.replace(AccessLog.to_file("combined", second_path))
        switch.log(RECORD)
        switch.close()
        switch.log(RECORD)
        self.assertEqual((self.lines(self.path), self.lines(second_path)), (1, 1))

    def test_sigusr1_and_reload(self) -> None:
        """
        SIGUSR1 rotates the file of a running service; a reload naming another file sends
        later records there, through the same object the listeners hold.
        """
        reactor = MemoryReactorClock()
        service = build_service(
            config_from(TWO_LISTENERS, access="json", access_file=self.path), reactor
        )
        # Signals arrive through the reactor's thread queue, which the memory reactor lacks.
        setattr(reactor, "callFromThread", lambda f, *a: f(*a))  # noqa: B010
        service.startService()
        self.addCleanup(service.stopService)
        access_log = factory_of(service.getServiceNamed("public")).access_log
        assert access_log is not None
        access_log.log(RECORD)
        os.kill(os.getpid(), signal.SIGUSR1)
        access_log.log(RECORD)
        self.assertEqual((self.lines(self.path + ".1"), self.lines(self.path)), (1, 1))
        other = os.path.join(self.directory, "other.log")
        config = config_from(TWO_LISTENERS, access="json", access_file=other)
        self.successResultOf(Deferred.fromCoroutine(service.reload(config)))
        self.assertIs(factory_of(service.getServiceNamed("public")).access_log, access_log)
        access_log.log(RECORD)
        self.assertEqual((self.lines(self.path), self.lines(other)), (1, 1))

    def test_rotation_settings(self) -> None:
        config = config_from(
            TWO_LISTENERS,
            access="json",
            access_file=self.path,
            rotate_length=0,  # type: ignore[arg-type]
            max_rotated_files=3,  # type: ignore[arg-type]
        )
        self.assertEqual((config.log.rotate_length, config.log.max_rotated_files), (0, 3))
        self.assertRaises(
            ConfigError,
            config_from,
            TWO_LISTENERS,
            access="json",
            rotate_length=-1,
        )


class TwistdJSONTests(TestCase):
    """
    C{twistd --logger twisted_rp.logs.json_observer} logs JSON lines from start to end.
    """

    def test_twistd(self) -> Deferred[None]:
        async def run() -> None:
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            path = os.path.join(directory, "proxy.toml")
            port = TwistdProcess.free_port()
            with open(path, "w", encoding="utf-8") as file:
                file.write(TWO_LISTENERS.replace("8080", str(port)).replace("9090", "0"))
            proxy = await TwistdProcess.launch(
                global_reactor, path, port, "--logger", "twisted_rp.logs.json_observer"
            )
            await proxy.stop()
            records = [json.loads(line) for line in proxy.log.splitlines()]
            messages = [record["message"] for record in records]
            self.assertIn("Server Shut Down.", messages)
            self.assertTrue(any(m.startswith("twistd ") for m in messages), messages)
            self.assertTrue(all({"time", "level", "namespace"} <= set(r) for r in records))

        return Deferred.fromCoroutine(run())
