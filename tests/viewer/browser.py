"""Headless Chromium for the viewer tests and the benchmark: selenium driving the system chromedriver.

Nothing is downloaded: the driver is the Debian ``chromium-driver`` binary at ``shutil.which("chromedriver")``
(``apt-get install -y chromium chromium-driver``), and selenium is pointed at it explicitly so its driver manager
never reaches the network. :func:`missing_browser` says why a test has to skip.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from contextlib import contextmanager

import numpy as np

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # WebGL on the CPU: viser draws into a WebGL canvas
    "--use-angle=swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--mute-audio",
)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def missing_browser() -> str | None:
    """None when headless Chromium can be driven here, else the reason (for ``pytest.skip``)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if _chromium() is None:
        return "chromium is not installed (apt-get install -y chromium chromium-driver)"
    if shutil.which("chromedriver") is None:
        return "chromedriver is not installed (apt-get install -y chromium-driver)"
    return None


@contextmanager
def headless_chromium(width: int = 800, height: int = 600):
    """A selenium Chrome driver on a fresh profile, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={width},{height}")
    with tempfile.TemporaryDirectory(prefix="nfields-chromium-") as profile:
        opts.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
        try:
            driver.set_page_load_timeout(20)
            yield driver
        finally:
            driver.quit()


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is truthy (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for_canvas(driver, timeout: float = 15.0) -> bool:
    """Wait until the page has a <canvas> with a non-zero size (viser's WebGL view)."""
    js = "return Array.from(document.querySelectorAll('canvas')).some(c => c.width > 0 && c.height > 0);"
    return wait_for(lambda: driver.execute_script(js), timeout, interval=0.1)


def canvas_rect(driver) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the largest canvas on the page, in CSS pixels."""
    js = """
    let best = null;
    for (const c of document.querySelectorAll('canvas')) {
      const r = c.getBoundingClientRect();
      if (best === null || r.width * r.height > best.width * best.height) best = r;
    }
    return best === null ? [0, 0, 0, 0] : [best.left, best.top, best.width, best.height];
    """
    return tuple(int(round(v)) for v in driver.execute_script(js))


def screenshot(driver, path=None) -> np.ndarray:
    """The page as an (H, W, 3) uint8 array (also written to ``path`` as PNG when given)."""
    from PIL import Image

    png = driver.get_screenshot_as_png()
    if path is not None:
        with open(path, "wb") as f:
            f.write(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
