"""
The dashboard in a real browser: Debian's headless Chromium, driven by chromedriver through
Selenium, against the admin listener on loopback, with real backends and health checks.

Without C{/usr/bin/chromium} and C{/usr/bin/chromedriver} (C{apt-get install chromium
chromium-driver}) the test is skipped, except under CI (C{CI} set), where it fails: C{.ci/run}
installs them.  C{CHROMIUM} and C{CHROMEDRIVER} may name other executables.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.test_admin_api import AdminHarness
from twisted_rp.pool.health import HealthChecker
from twisted_rp.pool.monitors import TCPMonitor

T = TypeVar("T")

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)
#: The flags the machine's own check uses: no sandbox as root, nothing fetched from the network.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or L{None}."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def start_browser(profile: str) -> Any:
    """A headless Chromium under chromedriver, with a fresh profile in C{profile}."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


class DashboardBrowserTests(TestCase):
    """Load the dashboard, watch a killed backend go down, drain another with a click."""

    timeout = 120

    def setUp(self) -> None:
        missing = browser_missing()
        if missing is not None:
            if os.environ.get("CI"):
                self.fail(f"the browser test cannot run in CI: {missing}")
            raise self.skipTest(missing)
        self.admin = AdminHarness(self)
        pool = self.admin.state.pools["app"]
        checker = HealthChecker(
            pool, TCPMonitor(self.admin.reactor), self.admin.reactor, 0.2, 0.5, rise=1, fall=1
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        self.profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
        self.addCleanup(shutil.rmtree, self.profile, True)
        self.browser: Any = None

    async def in_browser(self, work: Callable[[], T]) -> T:
        """Run blocking WebDriver calls off the reactor thread, which serves the page."""
        return await deferToThread(work)

    async def wait_for(self, description: str, condition: Callable[[Any], Any]) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        def waiting() -> Any:
            # A row replaced by a refresh between finding it and reading it: look again.
            return WebDriverWait(
                self.browser,
                15,
                poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(condition, f"waited 15 s for {description}")

        return await self.in_browser(waiting)

    async def test_backend_down_and_drain(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions

        self.browser = browser = await self.in_browser(lambda: start_browser(self.profile))

        async def quit_browser() -> None:
            await self.in_browser(browser.quit)

        self.addCleanup(quit_browser)

        def row(backend: str) -> Callable[[Any], Any]:
            def find(driver: Any) -> Any:
                rows = driver.find_elements(By.ID, f"backend-app-{backend}")
                return rows[0] if rows else False

            return find

        def attribute_is(backend: str, name: str, expected: str) -> Callable[[Any], bool]:
            def check(driver: Any) -> bool:
                found = row(backend)(driver)
                return bool(found) and found.get_attribute(name) == expected

            return check

        await self.in_browser(lambda: browser.get(self.admin.admin_url + "/"))
        self.assertEqual(await self.in_browser(lambda: browser.title), "twisted_rp dashboard")
        await self.wait_for("b1 to show as up", attribute_is("b1", "data-health", "up"))
        await self.wait_for("b2 to show as up", attribute_is("b2", "data-health", "up"))
        await self.wait_for(
            "the live status",
            lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "live",
        )

        # Kill b1 for real: the health checks notice, and so does the page.
        await self.admin.servers[0].stop()
        await self.wait_for("b1 to show as down", attribute_is("b1", "data-health", "down"))
        badge = await self.in_browser(
            lambda: browser.find_element(By.CSS_SELECTOR, "#backend-app-b1 .health").text
        )
        self.assertEqual(badge, "down")

        # Drain b2, confirming the question the page asks.
        drain = await self.wait_for(
            "b2's drain button",
            expected_conditions.element_to_be_clickable(
                (By.CSS_SELECTOR, "#backend-app-b2 button.action-drain")
            ),
        )
        # Refreshes update the page in place: the button found a poll ago is still the one
        # shown, so a click never lands on a node that was just replaced.
        await self.in_browser(lambda: time.sleep(1.5))
        await self.in_browser(drain.click)
        alert = await self.wait_for("the confirmation", expected_conditions.alert_is_present())
        question = await self.in_browser(lambda: alert.text)
        self.assertIn("Drain b2 in pool app?", question)
        await self.in_browser(alert.accept)
        await self.wait_for("b2 to show as draining", attribute_is("b2", "data-state", "draining"))
        self.assertEqual(self.admin.state.pools["app"].backend("b2").admin_state, "draining")

        # Declining the confirmation changes nothing.
        enable = await self.wait_for(
            "b2's enable button",
            expected_conditions.element_to_be_clickable(
                (By.CSS_SELECTOR, "#backend-app-b2 button.action-enable")
            ),
        )
        await self.in_browser(enable.click)
        alert = await self.wait_for("the confirmation", expected_conditions.alert_is_present())
        await self.in_browser(alert.dismiss)
        self.assertEqual(self.admin.state.pools["app"].backend("b2").admin_state, "draining")

        # The page loaded nothing from anywhere but the admin listener.
        resources = await self.in_browser(
            lambda: browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            )
        )
        self.assertTrue(resources)
        for url in resources:
            self.assertTrue(url.startswith(self.admin.admin_url + "/"), url)
