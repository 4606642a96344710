"""
Tests for L{twisted_rp.pool.passive}: the passive health policy on its own (the pool's use of it
is tested in L{tests.test_pool}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.pool import Backend, Outcome, PassiveHealth

FAILED = Outcome("connect_failed")
OK = Outcome("ok")


class RecordTests(SynchronousTestCase):
    """
    L{PassiveHealth.record} counts failures in a row.
    """

    def setUp(self) -> None:
        self.passive = PassiveHealth(consecutive_failures=3)
        self.backend = Backend("a", "127.0.0.1", 8001)

    def test_threshold(self) -> None:
        """
        The failure that makes C{consecutive_failures} in a row asks for an ejection.
        """
        self.assertEqual(
            [self.passive.record(self.backend, FAILED) for _ in range(3)], [False, False, True]
        )
        self.assertEqual(self.passive.failures(self.backend), 3)

    def test_every_backend_failure_kind_counts(self) -> None:
        """
        Connect failures, timeouts, bad responses and 5xx all count.
        """
        kinds = ["connect_failed", "timeout", "bad_response", "server_error"]
        results = [self.passive.record(self.backend, Outcome(kind)) for kind in kinds]
        self.assertEqual(results, [False, False, True, True])

    def test_success_resets(self) -> None:
        """
        A success in between starts the count again.
        """
        self.passive.record(self.backend, FAILED)
        self.passive.record(self.backend, FAILED)
        self.passive.record(self.backend, OK)
        self.assertFalse(self.passive.record(self.backend, FAILED))
        self.assertFalse(self.passive.record(self.backend, FAILED))
        self.assertTrue(self.passive.record(self.backend, FAILED))

    def test_aborted_is_neutral(self) -> None:
        """
        A client going away neither counts as a failure nor resets the count.
        """
        self.passive.record(self.backend, FAILED)
        self.passive.record(self.backend, FAILED)
        self.assertFalse(self.passive.record(self.backend, Outcome("aborted")))
        self.assertEqual(self.passive.failures(self.backend), 2)
        self.assertTrue(self.passive.record(self.backend, FAILED))

    def test_backends_counted_apart(self) -> None:
        """
        One backend's failures do not count against another.
        """
        other = Backend("b", "127.0.0.1", 8002)
        self.passive.record(self.backend, FAILED)
        self.passive.record(self.backend, FAILED)
        self.assertFalse(self.passive.record(other, FAILED))
        self.assertEqual(self.passive.failures(other), 1)

    def test_forget(self) -> None:
        """
        A forgotten backend starts from nothing.
        """
        self.passive.record(self.backend, FAILED)
        self.passive.eject(self.backend, 0.0)
        self.passive.record(self.backend, FAILED)
        self.passive.forget(self.backend)
        self.assertEqual(self.passive.failures(self.backend), 0)
        self.assertEqual(self.passive.ejections(self.backend), 0)


class EjectTests(SynchronousTestCase):
    """
    L{PassiveHealth.eject} gives growing ejection periods.
    """

    def setUp(self) -> None:
        self.passive = PassiveHealth(base_ejection=30.0, max_ejection=100.0)
        self.backend = Backend("a", "127.0.0.1", 8001)

    def test_growing_and_capped(self) -> None:
        """
        Each ejection lasts C{base_ejection} times the number of ejections, at most
        C{max_ejection}.
        """
        now = 0.0
        durations = []
        for _ in range(5):
            duration = self.passive.eject(self.backend, now)
            durations.append(duration)
            # Fail again soon after each ejection ends.
            now += duration + 1.0
        self.assertEqual(durations, [30.0, 60.0, 90.0, 100.0, 100.0])

    def test_eject_resets_failures(self) -> None:
        """
        After an ejection the backend needs a full run of failures again.
        """
        for _ in range(5):
            self.passive.record(self.backend, FAILED)
        self.passive.eject(self.backend, 0.0)
        self.assertEqual(self.passive.failures(self.backend), 0)

    def test_reset_after_healthy_period(self) -> None:
        """
        A backend that served C{max_ejection} seconds since its last ejection ended starts
        from C{base_ejection} again.
        """
        self.assertEqual(self.passive.eject(self.backend, 0.0), 30.0)
        self.assertEqual(self.passive.eject(self.backend, 30.0 + 99.0), 60.0)
        # That ejection ended at 189; 100 seconds of service later the count starts over.
        self.assertEqual(self.passive.eject(self.backend, 189.0 + 100.0), 30.0)
        self.assertEqual(self.passive.ejections(self.backend), 1)

    def test_reset_after_configurable(self) -> None:
        """
        C{reset_after} sets the healthy period that resets the count.
        """
        passive = PassiveHealth(base_ejection=10.0, max_ejection=100.0, reset_after=5.0)
        self.assertEqual(passive.eject(self.backend, 0.0), 10.0)
        self.assertEqual(passive.eject(self.backend, 14.0), 20.0)
        self.assertEqual(passive.eject(self.backend, 34.0 + 5.0), 10.0)


class MaxEjectedTests(SynchronousTestCase):
    """
    L{PassiveHealth.max_ejected} bounds how much of a pool may be ejected.
    """

    def test_rounds_down(self) -> None:
        """
        The share is rounded down.
        """
        passive = PassiveHealth(max_ejected_share=0.5)
        self.assertEqual([passive.max_ejected(n) for n in (2, 3, 4, 5, 10)], [1, 1, 2, 2, 5])

    def test_float_error(self) -> None:
        """
        Shares that are not exact in binary still give the expected count.
        """
        self.assertEqual(PassiveHealth(max_ejected_share=0.29).max_ejected(100), 29)
        self.assertEqual(PassiveHealth(max_ejected_share=0.7).max_ejected(10), 7)

    def test_at_least_one_of_two(self) -> None:
        """
        A small share still allows one ejection in a pool of two or more.
        """
        passive = PassiveHealth(max_ejected_share=0.1)
        self.assertEqual([passive.max_ejected(n) for n in (2, 3, 9, 10, 20)], [1, 1, 1, 1, 2])

    def test_single_backend(self) -> None:
        """
        The only backend of a pool is not ejected, unless the share is the whole pool.
        """
        self.assertEqual(PassiveHealth().max_ejected(1), 0)
        self.assertEqual(PassiveHealth(max_ejected_share=1.0).max_ejected(1), 1)

    def test_zero_share(self) -> None:
        """
        A share of 0 never ejects.
        """
        self.assertEqual(PassiveHealth(max_ejected_share=0.0).max_ejected(10), 0)


class ValidationTests(SynchronousTestCase):
    """
    Nonsensical settings are refused when the policy is made.
    """

    def test_invalid(self) -> None:
        invalid: list[dict[str, Any]] = [
            {"consecutive_failures": 0},
            {"base_ejection": 0.0},
            {"max_ejection": -1.0},
            {"base_ejection": 60.0, "max_ejection": 30.0},
            {"max_ejected_share": 1.5},
            {"max_ejected_share": -0.1},
        ]
        for kwargs in invalid:
            self.assertRaises(ValueError, PassiveHealth, **kwargs)
