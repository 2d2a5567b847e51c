"""Render a report in headless Chromium: a screenshot and the page's console errors.

Used by the tests (the report must render, non-blank, without console errors) and by people
who want a PNG of the report. Chromium comes from Debian (``apt-get install chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeweave.errors import ConfigError

# Flags that keep a headless Chromium from reaching for the network it does not have here.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
CONSOLE = re.compile(r":(?:INFO|WARNING|ERROR):CONSOLE(?:[:(]\d+\)?)?\]\s*(.*)")


@dataclass(frozen=True)
class Rendered:
    png: Path
    # Chromium logs every console message at one level, whatever its kind; a report has no
    # scripts, so anything on its console (an exception, a failed resource) counts as an error.
    errors: tuple[str, ...]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise ConfigError("no Chromium found: apt-get install chromium (make test installs it)")


def render(html: str | Path, png: str | Path, width: int = 1280, height: int = 2400,
           timeout_s: float = 90.0) -> Rendered:
    html, png = Path(html).resolve(), Path(png).resolve()
    with tempfile.TemporaryDirectory(prefix="edgeweave-chromium-") as profile:
        proc = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={png}", html.as_uri()],
            capture_output=True, text=True, timeout=timeout_s, check=False)
    if not png.is_file():
        raise ConfigError(f"Chromium wrote no screenshot (exit {proc.returncode}): "
                          f"{proc.stderr[-500:]}")
    return Rendered(png, tuple(m.group(1) for m in CONSOLE.finditer(proc.stderr)))


def non_blank_fraction(png: str | Path) -> float:
    """Fraction of pixels that differ from the most common colour (the background)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(png))[..., :3]
    flat = (img.reshape(-1, 3) * 255).astype(np.uint8)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    bg = colours[counts.argmax()]
    return float((flat != bg).any(axis=1).mean())
