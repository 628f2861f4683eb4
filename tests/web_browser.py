"""Headless Debian chromium driven by Selenium through Debian's chromium-driver: nothing is downloaded.

``Service(executable_path="/usr/bin/chromedriver")`` and ``binary_location = "/usr/bin/chromium"`` make
Selenium skip Selenium Manager; :func:`browser` also replaces Selenium Manager with a function that fails,
so that a change in Selenium can never make a test fetch a browser or a driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

needs_browser = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them)",
)


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900, downloads: str | None = None) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Selenium Manager must not run (it would download a browser)")

    original = selenium_manager.SeleniumManager.binary_paths
    selenium_manager.SeleniumManager.binary_paths = refuse  # type: ignore[method-assign]
    profile = tempfile.mkdtemp(prefix="cp-web-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--user-data-dir={profile}", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps", "--hide-scrollbars",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    if downloads:
        options.add_experimental_option("prefs", {"download.default_directory": downloads,
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        selenium_manager.SeleniumManager.binary_paths = original  # type: ignore[method-assign]
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, predicate: Any, timeout: float = 10.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(predicate)


def log_in(driver: Any, base: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    wait_for(driver, lambda d: "/login" in d.current_url)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "form.ctl"))
