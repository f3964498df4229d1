"""Helpers for the browser tests: the real `alignkit` server as a subprocess (so it can be SIGKILLed) and
headless Debian Chromium driven through Selenium with Debian's chromedriver (no browser download)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def chrome():
    """A headless Chromium session; skips (with the reason) only when the browser or its driver is absent."""
    if os.environ.get("ALIGNKIT_SKIP_BROWSER") == "1":
        pytest.skip("ALIGNKIT_SKIP_BROWSER=1")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("chromium and chromium-driver are not installed (`make browser` installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,860", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``alignkit ARGS --port P`` in a subprocess; ``start`` returns once it answers HTTP."""

    def __init__(self, *args: str, log: Path) -> None:
        self.args, self.log, self.port = [str(a) for a in args], log, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        script = Path(sys.executable).with_name("alignkit")
        command = [str(script)] if script.exists() else [sys.executable, "-c", "from alignkit.cli import app; app()"]
        handle = open(self.log, "a")  # closed when the process ends
        self.proc = subprocess.Popen([*command, *self.args, "--port", str(self.port)], stdout=handle,
                                     stderr=subprocess.STDOUT)
        for _ in range(600):  # the CLI imports take a few seconds on a busy machine
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/static/common.js", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"server did not answer: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no shutdown handler runs
            self.proc.wait()
