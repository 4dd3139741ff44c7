"""Headless Chromium for the report tests: load a page, collect its console messages, dump its DOM, screenshot it.

Console messages come from Chromium's own log (``--enable-logging=stderr``), where every message a page writes
to the console — errors, uncaught exceptions, blocked loads and scripts — is a ``CONSOLE`` line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")
CHECK_NONCE = "report-check"
# installed only in the test's copy of the page: reports what the browser made of it once everything loaded
CHECK_SCRIPT = f"""<script nonce="{CHECK_NONCE}">
window.addEventListener("load", () => {{
  const images = [...document.querySelectorAll("img.chart")];
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({{
    charts: images.map(i => i.dataset.chart),
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.dataset.chart),
    sections: [...document.querySelectorAll("section")].map(s => s.id),
    scripts: document.querySelectorAll("script").length,
    injected: document.body.dataset.injected || null,
    title: document.title,
  }});
  document.body.appendChild(out);
}});
</script>"""


def chromium() -> str:
    """Chromium's path; skips the test when it is missing, unless the test set-up installed it (it fails then)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "Debian's chromium is not installed (apt-get install chromium)"
    if os.environ.get("LMHPC_REQUIRE_PEERS") == "1" or os.environ.get("LMHPC_REQUIRE_SLURM") == "1":
        pytest.fail(message + "; the test set-up (tools/test.sh) should have installed it")
    pytest.skip(message)


def run(page: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Chromium on ``page`` with a fresh, empty profile."""
    with tempfile.TemporaryDirectory(prefix="lmhpc-chromium-") as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")


def console_messages(stderr: str) -> list[str]:
    """The console messages in Chromium's log."""
    return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.search(line))]


def dump_dom(page: Path) -> tuple[str, list[str]]:
    """The DOM after the page loaded, and the console messages it wrote."""
    proc = run(page, "--virtual-time-budget=10000", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, console_messages(proc.stderr)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2000) -> list[str]:
    """A screenshot of the page's top ``height`` pixels; returns the console messages."""
    proc = run(page, f"--window-size={width},{height}", f"--screenshot={png}")
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-3000:]
    return console_messages(proc.stderr)


def checked_copy(page: Path, out: Path) -> Path:
    """A copy of ``page`` whose policy lets the check script (and nothing else) run, with that script added."""
    text = page.read_text(encoding="utf-8")
    assert text.count("default-src 'none'") == 1
    text = text.replace("default-src 'none'", f"default-src 'none'; script-src 'nonce-{CHECK_NONCE}'")
    out.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    return out


def browser_check(page: Path, workdir: Path) -> tuple[dict, list[str]]:
    """What the check script found in ``page``, and the console messages of the checked copy."""
    dom, console = dump_dom(checked_copy(page, workdir / f"checked-{page.name}"))
    m = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    assert m, "the check script did not run:\n" + dom[-2000:]
    return json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&")), console
