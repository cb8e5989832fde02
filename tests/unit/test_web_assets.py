"""The desktop's page is self-contained: vendored files are what VERSIONS says, nothing points elsewhere.

The CSP (`default-src 'self'`) would block a request to another origin in the
browser; these checks catch it before a browser is started, and catch a
vendored library edited by hand (scripts/vendor-web.sh is the only way in).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"
VERSIONS = WEB / "vendor" / "VERSIONS"


def vendored() -> list[tuple[str, str]]:
    """(path under web/vendor, sha256) for every file VERSIONS lists."""
    rows = []
    for line in VERSIONS.read_text().splitlines():
        m = re.match(r"\s+file (\S+) sha256 ([0-9a-f]{64})", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


def test_versions_lists_every_vendored_file_and_each_has_a_licence():
    listed = {path for path, _ in vendored()}
    present = {str(p.relative_to(WEB / "vendor")) for p in (WEB / "vendor").rglob("*") if p.is_file()}
    assert present - {"VERSIONS"} == listed
    packages = {path.split("/")[0] for path in listed}
    assert all(f"{p}/LICENSE" in listed for p in packages)


@pytest.mark.parametrize("path, digest", vendored())
def test_a_vendored_file_is_the_one_the_script_took(path, digest):
    assert hashlib.sha256((WEB / "vendor" / path).read_bytes()).hexdigest() == digest


def test_the_page_names_no_other_origin():
    """No http(s):// or protocol-relative URL in what the page loads (licences and comments aside)."""
    offenders = []
    for file in [WEB / "index.html", *(WEB / "app").iterdir()]:
        text = file.read_text(errors="replace")
        for m in re.finditer(
            r"""(?:src|href|url\(|import\s[^'"]*from\s*|fetch\()\s*=?\s*['"(]?\s*((?:https?:)?//[^'")\s]+)""", text
        ):
            offenders.append(f"{file.name}: {m.group(1)}")
    assert not offenders, offenders


def test_the_page_has_no_inline_script_or_style():
    html = (WEB / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script> (the CSP refuses it)"
    assert "<style" not in html and " style=" not in html, "inline style (the CSP refuses it)"
