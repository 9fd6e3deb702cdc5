"""A real headless Chromium driven over the W3C WebDriver protocol: Debian's chromium and
chromium-driver (/usr/bin/chromedriver), plain HTTP to the driver, no browser download
and no Selenium. Enough for a page load, a form, scripts reading the DOM, cookies and a
screenshot."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
# As the machine documents them (root, no GPU, a closed network: no background calls).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    if chromium_binary() is None:
        return "Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)"
    if shutil.which("chromedriver") is None:
        return "chromedriver is not installed (apt-get install chromium-driver; .ci/run does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebDriverError(AssertionError):
    pass


class Browser:
    def __init__(self, width: int = 1280, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="dispatcher-chromium-")
        self.log_path = os.path.join(self.profile, "chromedriver.log")
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "ab")
        self.driver = subprocess.Popen(["chromedriver", f"--port={port}"],
                                       stdout=self._log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.session = ""
        try:
            self._wait_driver()
            args = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}/profile",
                    f"--window-size={width},{height}"]
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "pageLoadStrategy": "normal",
                "goog:chromeOptions": {"binary": chromium_binary(), "args": args}}}}
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.close()
            raise

    def _wait_driver(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.driver.poll() is not None:
                raise WebDriverError(f"chromedriver exited: {Path(self.log_path).read_text()}")
            try:
                if requests.get(self.base + "/status", timeout=2).json()["value"]["ready"]:
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise WebDriverError("chromedriver did not become ready")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        r = requests.request(method, self.base + path, json=body, timeout=90)
        value = r.json().get("value")
        if r.status_code != 200:
            raise WebDriverError(f"{method} {path}: {r.status_code} {value}")
        return value

    def _s(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return str(self._s("GET", "/url"))

    def run(self, script: str, *args: Any) -> Any:
        """``script`` is a function body; ``arguments[i]`` are ``args``."""
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def until(self, script: str, *args: Any, timeout: float = 30.0) -> Any:
        """Run ``script`` until it answers something truthy; that answer."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.run(script, *args)
            if last:
                return last
            time.sleep(0.2)
        raise WebDriverError(f"timed out after {timeout}s waiting for: {script} (last {last!r})")

    def find(self, css: str) -> str:
        found = self._s("POST", "/element", {"using": "css selector", "value": css})
        return str(found[ELEMENT])

    def type(self, css: str, text: str) -> None:
        self._s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self._s("POST", f"/element/{self.find(css)}/click", {})

    def cookies(self) -> list[dict[str, Any]]:
        return list(self._s("GET", "/cookie"))

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._s("GET", "/screenshot")))
        return path

    def close(self) -> None:
        if self.session:
            try:
                self._s("DELETE", "")
            except (requests.RequestException, WebDriverError):
                pass
            self.session = ""
        if self.driver.poll() is None:
            try:
                os.killpg(self.driver.pid, 15)
                self.driver.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.driver.pid, 9)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
