#!/usr/bin/env python3
"""Assemble the shipped sample corpus ``data/sample/`` from texts that ship in Debian packages.

The corpus is what the pipeline's demo (curate -> dedup -> tokenizer -> tokenize -> pretrain) runs
on.  It is real text, not generated filler: HTML documentation (stored as WARC "response" records),
manual pages in many languages rendered to plain text, Mallard help pages, Debian changelogs and
README files, source code (Python standard library, pip/setuptools, C headers, Perl modules) and
license / copyright texts.  Duplicates are whatever the packages naturally contain (the same
license in many copyright files, the same vendored module in pip and setuptools, the same page in
several translations of a manual where a chapter was not translated, ...); nothing is duplicated
on purpose.

This is a maintainer tool.  The assembled corpus is committed, so users never need to run it.
It must run as root on Debian 12 (bookworm): it installs the packages it reads with
``apt-get install --no-install-recommends`` (after ``apt-get update``), then reads the installed
files.  Rebuilding with the same package versions gives byte-identical data files (inputs are
sorted, ids are hashes of the provenance URL, compressors run single-threaded with fixed levels,
WARC dates come from the files' modification times, gzip headers carry mtime 0); only
``MANIFEST.json``'s ``build_date`` changes, unless ``SOURCE_DATE_EPOCH`` is set.

Usage::

    python tools/build_sample_corpus.py            # install packages, rebuild data/sample/
    python tools/build_sample_corpus.py --no-install --out /tmp/sample   # use what is installed

Provenance URL scheme: ``deb://<binary-package>/<path-inside-the-package-without-leading-slash>``,
e.g. ``deb://manpages-de/usr/share/man/de/man1/ls.1.gz``.  The package version is in
``metadata.package_version``.  HTML pages (WARC records) use the same location in https form,
``https://deb.invalid/<binary-package>/<path>``, because WARC readers parse the HTTP headers of
``response`` records only for http(s) target URIs.  Every id is the sha1 of the ``deb://`` form.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import email.utils
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "data" / "sample"

# --------------------------------------------------------------------------------------------
# What goes in.  Every entry names Debian binary packages; the script installs them.
# `frac` keeps a deterministic subset (by a hash of the language-independent relative path, so
# the same pages are kept in every translation); it keeps the corpus inside its size budget.
# --------------------------------------------------------------------------------------------

# Languages are ISO 639-1 codes (pt covers pt_BR, sr covers sr@latin); `locale` keeps the tag.
MAN_LANGS = None  # None: every language the packages below ship
# GNOME help locales kept: those where most pages are translated.  In gnome-user-docs 43 many
# locales ship the English page for every string nobody translated; locales where py3langid
# finds the declared language in under ~40% of the pages (he, hi, kn, lt, pa, ro, tr, fa, it,
# ja, mr, sl, te, vi, zh_CN) would mostly add English copies labelled with another language.
# Partly translated locales (as, da, fi, gl, gu, ta) stay: their near-duplicates of the English
# pages are real.  sr@latin is translated (langid just reads Latin-script Serbian as Croatian).
HELP_LOCALES = ["C", "as", "ca", "cs", "da", "de", "el", "es", "fi", "fr", "gl", "gu", "hr", "hu",
                "id", "ko", "lv", "nl", "pl", "pt", "pt_BR", "ru", "sr", "sr@latin", "sv", "ta", "uk"]

# Manual pages -> "prose".  English pages come from the upstream packages, translations from the
# manpages-l10n packages (and from the translated pages the base tools ship themselves).
MAN_PACKAGES = [
    "manpages", "manpages-dev",
    "coreutils", "util-linux", "findutils", "grep", "sed", "tar", "gzip", "diffutils", "bash",
    "dpkg", "dpkg-dev", "apt", "debconf", "man-db", "procps", "passwd", "login", "adduser",
    "manpages-de", "manpages-de-dev", "manpages-fr", "manpages-fr-dev",
    "manpages-es", "manpages-es-dev", "manpages-it", "manpages-it-dev",
    "manpages-pl", "manpages-pl-dev", "manpages-ru", "manpages-ru-dev",
    "manpages-nl", "manpages-nl-dev", "manpages-pt-br", "manpages-pt-br-dev",
    "manpages-ja", "manpages-ja-dev",
    "libssl-doc", "git-man", "systemd", "iproute2", "openssh-client", "e2fsprogs",
    "manpages-cs", "manpages-cs-dev", "manpages-da", "manpages-fi", "manpages-hu", "manpages-id",
    "manpages-mk", "manpages-nb", "manpages-ro", "manpages-sr", "manpages-sv", "manpages-uk",
    "manpages-uk-dev", "manpages-vi", "manpages-tr", "manpages-zh", "perl-doc",
]
MAN_FRAC = {"manpages-dev": 0.5, "manpages-ja-dev": 0.5, "manpages-ru-dev": 0.5}
MAN_DEFAULT_FRAC = 1.0

# Mallard help pages (GNOME user and admin guides) -> "prose".
HELP_PACKAGES = ["gnome-user-docs"]

# HTML documentation -> "web" (WARC).
# (package, path regex with a `rel` group (language-independent key) and optional `lang` group,
#  default language, fraction kept)
WEB_SPECS = [
    ("gimp-help-de", r"^/usr/share/gimp/2\.0/help/de/(?P<rel>.+\.html)$", "de", 0.45),
    ("gimp-help-fr", r"^/usr/share/gimp/2\.0/help/fr/(?P<rel>.+\.html)$", "fr", 0.45),
    ("gimp-help-es", r"^/usr/share/gimp/2\.0/help/es/(?P<rel>.+\.html)$", "es", 0.45),
    ("debian-handbook",
     r"^/usr/share/doc/debian-handbook/html/(?P<lang>en-US|de-DE|fr-FR|es-ES|it-IT|pt-BR|ja-JP)"
     r"/(?P<rel>[^/]+\.html)$", None, 0.08),
    ("debian-reference-en", r"^/usr/share/debian-reference/(?P<rel>.+)\.en\.html$", "en", 0.2),
    ("debian-reference-de", r"^/usr/share/debian-reference/(?P<rel>.+)\.de\.html$", "de", 0.2),
    ("debian-reference-fr", r"^/usr/share/debian-reference/(?P<rel>.+)\.fr\.html$", "fr", 0.2),
    ("debian-reference-es", r"^/usr/share/debian-reference/(?P<rel>.+)\.es\.html$", "es", 0.2),
    ("debian-reference-ja", r"^/usr/share/debian-reference/(?P<rel>.+)\.ja\.html$", "ja", 0.2),
    ("python3.11-doc", r"^/usr/share/doc/python3\.11/html/(?P<rel>.+\.html)$", "en", 0.02),
    ("developers-reference-fr", r"^/usr/share/developers-reference/fr/(?P<rel>.+\.html)$", "fr", 0.15),
    ("developers-reference-de", r"^/usr/share/developers-reference/de/(?P<rel>.+\.html)$", "de", 0.15),
    ("maint-guide-fr", r"^/usr/share/doc/maint-guide-fr/html/(?P<rel>.+)\.fr\.html$", "fr", 1.0),
    ("maint-guide-es", r"^/usr/share/doc/maint-guide-es/html/(?P<rel>.+)\.es\.html$", "es", 1.0),
    ("maint-guide-it", r"^/usr/share/doc/maint-guide-it/html/(?P<rel>.+)\.it\.html$", "it", 1.0),
    ("debian-faq-de", r"^/usr/share/doc/debian/FAQ/de/(?P<rel>.+)\.de\.html$", "de", 1.0),
    ("debian-faq-fr", r"^/usr/share/doc/debian/FAQ/fr/(?P<rel>.+)\.fr\.html$", "fr", 1.0),
]
# Metapackages installed alongside (python3-doc pulls in python3.11-doc).
WEB_EXTRA_INSTALL = ["python3-doc"]

# Plain-text versions of HTML manuals, and the Debian doc files of the packages used -> "prose".
TEXT_SPECS = [
    ("debian-reference-en", r"^/usr/share/debian-reference/debian-reference\.en\.txt\.gz$", "en"),
]
DOCFILE_RE = re.compile(
    r"^/usr/share/doc/[^/]+/(changelog\.Debian(\.gz)?|NEWS\.Debian(\.gz)?|README\.Debian(\.gz)?"
    r"|README(\.md|\.txt|\.rst)?(\.gz)?|NEWS(\.gz)?|TODO(\.gz)?)$"
)

# Source code -> "code".  (package, path regex, programming language, fraction kept)
CODE_SPECS = [
    ("libpython3.11-minimal", r"^/usr/lib/python3\.11/.+\.py$", "python", 0.7),
    ("libpython3.11-stdlib", r"^/usr/lib/python3\.11/.+\.py$", "python", 0.7),
    ("python3-lib2to3", r"^/usr/lib/python3\.11/.+\.py$", "python", 0.7),
    ("python3-distutils", r"^/usr/lib/python3\.11/.+\.py$", "python", 0.7),
    ("libpython3.11-testsuite", r"^/usr/lib/python3\.11/.+\.py$", "python", 0.1),
    ("python3-pip", r"^/usr/lib/python3/dist-packages/.+\.py$", "python", 1.0),
    ("python3-setuptools", r"^/usr/lib/python3/dist-packages/.+\.py$", "python", 1.0),
    ("python3-pkg-resources", r"^/usr/lib/python3/dist-packages/.+\.py$", "python", 1.0),
    ("libc6-dev", r"^/usr/include/.+\.h$", "c", 1.0),
    ("linux-libc-dev", r"^/usr/include/.+\.h$", "c", 1.0),
    ("libpython3.11-dev", r"^/usr/include/.+\.h$", "c", 1.0),
    ("libssl-dev", r"^/usr/include/.+\.h$", "c", 1.0),
    ("libstdc++-12-dev", r"^/usr/include/c\+\+/.+$", "c++", 0.4),
    ("perl-modules-5.36", r"^/usr/share/perl/5\.36\.0/.+\.(pm|pl)$", "perl", 0.2),
]

# License texts -> "license": /usr/share/common-licenses, the copyright file of every package in
# the dependency closure of everything installed here plus these common tools, and LICENSE /
# COPYING files shipped inside the packages above.
LICENSE_EXTRA_PACKAGES = [
    "build-essential", "git", "curl", "wget", "ca-certificates", "openssh-client", "rsync", "less",
    "vim-tiny", "gnupg", "xz-utils", "zstd", "unzip", "make", "python3-venv", "python3-dev",
    "groff-base", "file",
]
LICENSE_FILE_RE = re.compile(r"/(LICEN[CS]E|COPYING|COPYRIGHT|NOTICE)[^/]*$", re.I)

# Licenses of packages whose debian/copyright is not machine-readable (DEP-5), read by hand.
LICENSE_CURATED = {
    "manpages-ja": "DFSG-free, per page: same license as the original English page",
    "manpages-ja-dev": "DFSG-free, per page: same license as the original English page",
    "python3-doc": "PSF-2.0",
    "python3.11-doc": "PSF-2.0",
    "libpython3.11-minimal": "PSF-2.0",
    "libpython3.11-stdlib": "PSF-2.0",
    "libpython3.11-testsuite": "PSF-2.0",
    "python3-lib2to3": "PSF-2.0",
    "python3-distutils": "PSF-2.0",
    "python3-setuptools": "MIT",
    "python3-pkg-resources": "MIT",
    "libc6-dev": "LGPL-2.1+",
    "libpython3.11-dev": "PSF-2.0",
    "libstdc++-12-dev": "GPL-3+ with GCC-exception-3.1",
    "manpages-tr": "GPL (translations); the original English pages keep their licenses",
    "base-files": "GPL-2+",
    "debian-faq-de": "GPL-2+",
    "debian-faq-fr": "GPL-2+",
}

MAX_TEXT_BYTES = 256 * 1024      # longer text documents are cut at a line boundary
MAX_HTML_BYTES = 1024 * 1024     # longer HTML pages are left out (cutting HTML breaks it)
MIN_TEXT_CHARS = 64              # shorter documents (after rendering) are left out
# Size tiers (rendered text / source bytes -> share kept, times the package's fraction): longer
# documents are sampled at lower rates, so the sample holds many documents within its size budget
# and still has some long ones.
SIZE_TIERS = {
    "man": [(5 * 1024, 1.0), (10 * 1024, 0.3), (None, 0.03)],
    "code": [(16 * 1024, 1.0), (48 * 1024, 0.3), (None, 0.04)],
}

# Bytes of raw text per output part, per source (tuned so parts compress to ~0.3-1 MB).
PART_RAW_BYTES = {"prose": 3_500_000, "code": 4_000_000, "license": 2_000_000, "web": 3_500_000}
# Output formats per source, cycled over its parts: code/ alternates zstandard and gzip parts
# so that readers of both formats are exercised on real data.
SOURCE_FORMAT = {"prose": ["jsonl.zst"], "code": ["jsonl.zst", "jsonl.gz"], "license": ["jsonl.zst"]}
ZSTD_LEVEL = 19
WEB_URL_PREFIX = "https://deb.invalid/"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def keep(rel: str, frac: float) -> bool:
    if frac >= 1.0:
        return True
    h = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16)
    return h / 0x100000000 < frac


_LANGID = None
# Candidates for language identification: copyright files are full of names, addresses and file
# lists that an unrestricted model reads as rare languages.
DETECT_LANGS = ["en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "uk", "cs", "sv", "da", "fi",
                "hu", "tr", "ja", "zh", "ko"]


class DetectedLang(str):
    """A language code that came from language identification, not from the package."""


def detect_lang(text: str) -> str:
    """Language of a text no package or path declares (copyright files, changelogs, READMEs)."""
    global _LANGID
    if _LANGID is None:
        import py3langid
        py3langid.set_languages(DETECT_LANGS)
        _LANGID = py3langid
    return DetectedLang(_LANGID.classify(text[:5000])[0])


def keep_sized(rel: str, nbytes: int, tiers: list, frac: float = 1.0) -> bool:
    """Deterministic sampling by size tier; the hash is the same one `keep` uses, so a smaller
    fraction keeps a subset of what a larger one keeps."""
    for limit, share in tiers:
        if limit is None or nbytes <= limit:
            return keep(rel, share * frac)
    return False


def norm_lang(loc: str) -> str:
    loc = loc.split(".")[0].split("@")[0]
    if loc in ("C", "POSIX", ""):
        return "en"
    return re.split(r"[-_]", loc)[0].lower()


def read_maybe_gz(path: str) -> bytes:
    data = Path(path).read_bytes()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return data


def decode_text(data: bytes) -> tuple[str, str] | None:
    """Decode bytes as text; None for binary.  Returns (text, encoding)."""
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    text = data.decode("latin-1")
    ctrl = sum(1 for c in text[:8192] if ord(c) < 32 and c not in "\t\n\r\f")
    if ctrl > 8:
        return None
    return text, "latin-1"


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n")
    lines = [ln.rstrip() for ln in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def cap_text(text: str) -> tuple[str, bool, int]:
    raw = text.encode("utf-8")
    if len(raw) <= MAX_TEXT_BYTES:
        return text, False, len(raw)
    cut = raw[:MAX_TEXT_BYTES]
    nl = cut.rfind(b"\n")
    if nl > MAX_TEXT_BYTES // 2:
        cut = cut[: nl + 1]
    return cut.decode("utf-8", errors="ignore"), True, len(raw)


# --------------------------------------------------------------------------------------------
# Packages: install, versions, file lists, licenses
# --------------------------------------------------------------------------------------------

@dataclass
class PkgInfo:
    name: str
    version: str
    source: str
    license: str = ""
    license_origin: str = ""
    docs: int = 0


class Packages:
    def __init__(self):
        self.info: dict[str, PkgInfo] = {}
        self._files: dict[str, list[str]] = {}
        self.status: dict[str, dict] = {}
        out = run(["dpkg-query", "-W", "-f",
                   "${Package}\t${Version}\t${source:Package}\t${db:Status-Abbrev}\t${Essential}"
                   "\t${Priority}\t${Pre-Depends}\t${Depends}\t${Provides}\n"])
        for line in out.splitlines():
            name, ver, src, st, ess, prio, pre, dep, prov = line.split("\t")
            if not st.startswith("ii"):
                continue
            name = name.split(":")[0]
            self.status[name] = {"version": ver, "source": src or name, "essential": ess == "yes",
                                 "priority": prio, "deps": pre + ", " + dep, "provides": prov}

    def installed(self, name: str) -> bool:
        return name in self.status

    def get(self, name: str) -> PkgInfo:
        if name not in self.info:
            st = self.status[name]
            lic, origin = package_license(name)
            self.info[name] = PkgInfo(name, st["version"], st["source"], lic, origin)
        return self.info[name]

    def files(self, name: str) -> list[str]:
        if name not in self._files:
            out = run(["dpkg", "-L", name])
            files = []
            for p in out.splitlines():
                if p in ("/.", "") or os.path.islink(p) or not os.path.isfile(p):
                    continue
                files.append(p)
            self._files[name] = sorted(set(files))
        return self._files[name]

    def closure(self, roots: list[str]) -> list[str]:
        provides: dict[str, list[str]] = {}
        for n, st in self.status.items():
            for p in st["provides"].split(","):
                p = p.strip().split(" ")[0]
                if p:
                    provides.setdefault(p, []).append(n)
        seen: set[str] = set()
        todo = [r for r in roots if r in self.status]
        todo += [n for n, st in self.status.items() if st["essential"] or st["priority"] == "required"]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            for group in self.status[n]["deps"].split(","):
                for alt in group.split("|"):
                    d = alt.strip().split(" ")[0].split(":")[0]
                    if not d:
                        continue
                    for cand in [d] + provides.get(d, []):
                        if cand in self.status and cand not in seen:
                            todo.append(cand)
        return sorted(seen)


def install_packages(names: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"apt-get update; apt-get install {len(names)} packages")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *names],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def _dep5_license(text: str) -> str | None:
    if not text.startswith("Format:"):
        return None
    paras = re.split(r"\n\s*\n", text)
    header_lic = None
    for i, para in enumerate(paras):
        fields = {}
        for m in re.finditer(r"^([A-Za-z-]+):[ \t]*(.*)$", para, re.M):
            fields.setdefault(m.group(1).lower(), m.group(2).strip())
        if i == 0 and "license" in fields:
            header_lic = fields["license"]
        if "files" in fields and "*" in fields["files"].split() and fields.get("license"):
            return fields["license"]
    return header_lic or None


_HEURISTICS = [
    (r"GNU (Library|Lesser) General Public License.{0,200}?version 2(\.1)?.{0,80}?later", "LGPL-2.1+"),
    (r"GNU General Public License.{0,200}?version 3.{0,80}?later", "GPL-3+"),
    (r"GNU General Public License.{0,200}?version 2.{0,80}?later", "GPL-2+"),
    (r"GNU General Public License.{0,200}?version 2", "GPL-2"),
    (r"GNU General Public License", "GPL"),
    (r"Artistic License", "Artistic or GPL-1+"),
    (r"Python Software Foundation", "PSF-2.0"),
    (r"Permission is hereby granted, free of charge", "Expat"),
    (r"Redistribution and use in source and binary forms", "BSD"),
    (r"Apache License", "Apache-2.0"),
    (r"public domain", "public-domain"),
]


def package_license(name: str) -> tuple[str, str]:
    if name in LICENSE_CURATED:
        return LICENSE_CURATED[name], "curated from debian/copyright"
    path = Path("/usr/share/doc") / name / "copyright"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "see debian/copyright", "missing"
    lic = _dep5_license(text)
    if lic:
        return lic, "debian/copyright (DEP-5, Files: *)"
    flat = re.sub(r"\s+", " ", text)
    for pat, spdx in _HEURISTICS:
        if re.search(pat, flat, re.I):
            return spdx, "debian/copyright (text match)"
    return "see debian/copyright", "unrecognised"


# --------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------

@dataclass
class Doc:
    source: str          # web | prose | code | license
    package: str
    path: str
    lang: str | None
    text: str = ""       # for web: the HTML (decoded), payload bytes in `payload`
    payload: bytes = b""
    meta: dict = field(default_factory=dict)

    @property
    def lang_detected(self) -> bool:
        return isinstance(self.lang, DetectedLang)

    @property
    def deb_url(self) -> str:
        return f"deb://{self.package}{self.path}"

    @property
    def url(self) -> str:
        # WARC readers (warcio) only parse the HTTP block of records whose target URI is
        # http(s), so HTML pages get the same location in https form under the reserved
        # .invalid domain.
        if self.source == "web":
            return f"{WEB_URL_PREFIX}{self.package}{self.path}"
        return self.deb_url

    @property
    def id(self) -> str:
        return hashlib.sha1(self.deb_url.encode()).hexdigest()


def base_meta(pk: Packages, doc: Doc) -> dict:
    info = pk.get(doc.package)
    m = {"package": info.name, "package_version": info.version, "source_package": info.source,
         "license": info.license, "license_origin": info.license_origin, "path": doc.path}
    if doc.lang:
        m["lang"] = doc.lang
        m["lang_source"] = "detected" if doc.lang_detected else "declared"
    m.update(doc.meta)
    return m


# ---- manual pages -------------------------------------------------------------------------

MAN_PATH_RE = re.compile(r"^/usr/share/man/(?:(?P<loc>[^/]+)/)?man(?P<sec>[0-9][^/]*)/(?P<name>[^/]+)$")


def render_man(path: str) -> str | None:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MANWIDTH": "80",
           "MAN_DISABLE_SECCOMP": "1", "HOME": "/nonexistent"}
    try:
        out = subprocess.run(["man", "-E", "UTF-8", "--no-hyphenation", "--no-justification", "-l", path],
                             capture_output=True, env=env, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    text = out.stdout.decode("utf-8", errors="replace")
    text = re.sub(r".\x08", "", text)  # any overstrike left
    return clean_text(text)


def collect_man(pk: Packages, jobs: int) -> list[Doc]:
    todo: list[Doc] = []
    for pkg in MAN_PACKAGES:
        frac = MAN_FRAC.get(pkg, MAN_DEFAULT_FRAC)
        for path in pk.files(pkg):
            m = MAN_PATH_RE.match(path)
            if not m:
                continue
            loc = m.group("loc") or "C"
            lang = norm_lang(loc)
            if MAN_LANGS is not None and lang not in MAN_LANGS:
                continue
            head = read_maybe_gz(path)[:512]
            if re.match(rb"(\.\\\".*\n)*\.so ", head):
                continue  # a link to another page, not a page
            rel = f"man{m.group('sec')}/{m.group('name')}"
            meta = {"format": "manpage", "section": m.group("sec"), "renderer": "man-db/groff, 80 columns"}
            if loc != "C":
                meta["locale"] = loc
            meta["_rel"] = rel
            meta["_frac"] = frac
            todo.append(Doc("prose", pkg, path, lang, meta=meta))
    log(f"man: rendering {len(todo)} pages with {jobs} jobs")
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        texts = list(ex.map(render_man, [d.path for d in todo]))
    docs = []
    for d, t in zip(todo, texts):
        rel, frac = d.meta.pop("_rel"), d.meta.pop("_frac")
        if t and len(t.strip()) >= MIN_TEXT_CHARS and keep_sized(rel, len(t.encode()), SIZE_TIERS["man"], frac):
            d.text = t
            docs.append(d)
    return docs


# ---- Mallard help pages ---------------------------------------------------------------------

_BLOCKS = {"page", "section", "title", "subtitle", "p", "item", "list", "steps", "terms", "tree",
           "table", "tr", "td", "th", "note", "figure", "synopsis", "code", "screen", "example",
           "quote", "listing", "desc", "comment", "links", "media", "cite", "div", "tbody",
           "thead"}
_PRE = {"code", "screen"}
_SKIP = {"info", "include", "credit", "license"}
_BREAK = "\x00"


def _local(tag) -> str:
    return tag.split("}")[-1] if isinstance(tag, str) else ""


def mallard_text(data: bytes) -> str:
    root = ET.fromstring(data)
    parts: list[str] = []

    def walk(el, pre: bool):
        tag = _local(el.tag)
        if tag in _SKIP:
            return
        block = tag in _BLOCKS
        pre = pre or tag in _PRE
        if block:
            parts.append(_BREAK)
            if tag == "item":
                parts.append("- ")
        if el.text:
            parts.append(el.text if pre else re.sub(r"\s+", " ", el.text))
        for c in el:
            walk(c, pre)
            if c.tail:
                parts.append(c.tail if pre else re.sub(r"\s+", " ", c.tail))
        if block:
            parts.append(_BREAK)

    walk(root, False)
    paras = [p.strip() for p in "".join(parts).split(_BREAK)]
    paras = [p for p in paras if p and p != "-"]
    return clean_text("\n\n".join(paras))


HELP_PATH_RE = re.compile(r"^/usr/share/help/(?P<loc>[^/]+)/(?P<guide>[^/]+)/(?P<rel>[^/]+\.page)$")


def collect_help(pk: Packages) -> list[Doc]:
    docs = []
    for pkg in HELP_PACKAGES:
        for path in pk.files(pkg):
            m = HELP_PATH_RE.match(path)
            if not m:
                continue
            lang = norm_lang(m.group("loc"))
            if m.group("loc") not in HELP_LOCALES:
                continue
            try:
                text = mallard_text(Path(path).read_bytes())
            except ET.ParseError:
                continue
            if len(text.strip()) < MIN_TEXT_CHARS:
                continue
            meta = {"format": "mallard", "guide": m.group("guide")}
            if m.group("loc") != "C":
                meta["locale"] = m.group("loc")
            docs.append(Doc("prose", pkg, path, lang, text=text, meta=meta))
    return docs


# ---- plain text documentation ------------------------------------------------------------------

def collect_textdocs(pk: Packages, doc_packages: list[str]) -> list[Doc]:
    docs = []
    for pkg, rx, lang in TEXT_SPECS:
        for path in pk.files(pkg):
            if re.match(rx, path):
                dec = decode_text(read_maybe_gz(path))
                if dec:
                    docs.append(Doc("prose", pkg, path, lang, text=clean_text(dec[0]),
                                    meta={"format": "text"}))
    for pkg in doc_packages:
        for path in pk.files(pkg):
            if not DOCFILE_RE.match(path):
                continue
            dec = decode_text(read_maybe_gz(path))
            if not dec or len(dec[0].strip()) < MIN_TEXT_CHARS:
                continue
            name = path.rsplit("/", 1)[1]
            kind = "changelog" if name.startswith("changelog") else "news" if name.startswith("NEWS") else "readme"
            docs.append(Doc("prose", pkg, path, detect_lang(dec[0]), text=clean_text(dec[0]),
                            meta={"format": "text", "kind": kind}))
    return docs


# ---- HTML -------------------------------------------------------------------------------------

_CHARSET_RE = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_-]+)""", re.I)


def collect_web(pk: Packages) -> list[Doc]:
    docs = []
    for pkg, rx, dlang, frac in WEB_SPECS:
        rxc = re.compile(rx)
        for path in pk.files(pkg):
            m = rxc.match(path)
            if not m:
                continue
            if not keep(m.group("rel"), frac):
                continue
            data = Path(path).read_bytes()
            if not data.strip() or len(data) > MAX_HTML_BYTES or b"\x00" in data:
                continue
            cm = _CHARSET_RE.search(data[:4096])
            charset = cm.group(1).decode().lower() if cm else "utf-8"
            try:
                data.decode(charset)
            except (LookupError, UnicodeDecodeError):
                continue
            loc = m.groupdict().get("lang")
            lang = norm_lang(loc) if loc else dlang
            meta = {"format": "html", "charset": charset}
            if loc:
                meta["locale"] = loc
            mtime = int(os.stat(path).st_mtime)
            docs.append(Doc("web", pkg, path, lang, payload=data, meta=meta | {"mtime": mtime}))
    return docs


# ---- code -------------------------------------------------------------------------------------

def collect_code(pk: Packages) -> list[Doc]:
    docs = []
    for pkg, rx, prog, frac in CODE_SPECS:
        rxc = re.compile(rx)
        for path in pk.files(pkg):
            if not rxc.match(path):
                continue
            data = Path(path).read_bytes()
            if not keep_sized(path, len(data), SIZE_TIERS["code"], frac):
                continue
            dec = decode_text(data)
            if not dec or len(dec[0].strip()) < MIN_TEXT_CHARS:
                continue
            meta = {"format": "source", "programming_language": prog}
            if dec[1] != "utf-8":
                meta["original_encoding"] = dec[1]
            docs.append(Doc("code", pkg, path, None, text=clean_text(dec[0]), meta=meta))
    return docs


# ---- licenses ---------------------------------------------------------------------------------

def collect_licenses(pk: Packages, closure: list[str], content_packages: list[str]) -> list[Doc]:
    docs = []
    for path in pk.files("base-files"):
        if path.startswith("/usr/share/common-licenses/"):
            dec = decode_text(Path(path).read_bytes())
            if dec:
                name = path.rsplit("/", 1)[1]
                docs.append(Doc("license", "base-files", path, detect_lang(dec[0]), text=clean_text(dec[0]),
                                meta={"format": "license-text", "kind": "license-text",
                                      "license": f"{name} (license text; verbatim copies permitted)"}))
    for pkg in closure:
        path = f"/usr/share/doc/{pkg}/copyright"
        if path in pk.files(pkg):
            dec = decode_text(Path(path).read_bytes())
            if dec and len(dec[0].strip()) >= MIN_TEXT_CHARS:
                docs.append(Doc("license", pkg, path, detect_lang(dec[0]), text=clean_text(dec[0]),
                                meta={"format": "debian-copyright", "kind": "copyright",
                                      "machine_readable": dec[0].startswith("Format:")}))
    for pkg in content_packages:
        for path in pk.files(pkg):
            if path.startswith("/usr/share/doc/") or not LICENSE_FILE_RE.search(path):
                continue
            dec = decode_text(read_maybe_gz(path))
            if dec and len(dec[0].strip()) >= MIN_TEXT_CHARS:
                docs.append(Doc("license", pkg, path, detect_lang(dec[0]), text=clean_text(dec[0]),
                                meta={"format": "license-text", "kind": "license-file"}))
    return docs


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

def to_record(pk: Packages, d: Doc) -> dict:
    text, truncated, nbytes = cap_text(d.text)
    meta = base_meta(pk, d)
    if truncated:
        meta["truncated"] = True
        meta["original_bytes"] = nbytes
    return {"id": d.id, "text": text, "source": d.source, "url": d.url, "metadata": meta}


def split_parts(items: list, sizes: list[int], per_part: int) -> list[list]:
    total = sum(sizes)
    n = max(1, -(-total // per_part))
    target = total / n
    parts, cur, acc = [], [], 0
    for it, s in zip(items, sizes):
        if cur and acc + s / 2 > target * (len(parts) + 1) and len(parts) < n - 1:
            parts.append(cur)
            cur = []
        cur.append(it)
        acc += s
    if cur:
        parts.append(cur)
    return parts


def compress(data: bytes, fmt: str) -> bytes:
    if fmt.endswith(".zst"):
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=0).compress(data)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data)
    return buf.getvalue()


def write_jsonl(out: Path, source: str, records: list[dict]) -> list[dict]:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    sizes = [len(ln.encode()) for ln in lines]
    parts = split_parts(list(range(len(lines))), sizes, PART_RAW_BYTES[source])
    files = []
    for i, idx in enumerate(parts):
        fmt = SOURCE_FORMAT[source][i % len(SOURCE_FORMAT[source])]
        rel = f"{source}/part-{i:03d}.{fmt}"
        data = compress("".join(lines[j] for j in idx).encode("utf-8"), fmt)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        files.append({"path": rel, "format": fmt, "source": source, "documents": len(idx),
                      "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "ids": [records[j]["id"] for j in idx]})
        log(f"  {rel}: {len(idx)} docs, {len(data)} bytes")
    return files


def _http_date(ts: int) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _warc_date(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_warc(out: Path, pk: Packages, docs: list[Doc]) -> tuple[list[dict], list[dict]]:
    (out / "web").mkdir(parents=True, exist_ok=True)
    parts = split_parts(docs, [len(d.payload) for d in docs], PART_RAW_BYTES["web"])
    files, prov = [], []
    for i, part in enumerate(parts):
        rel = f"web/part-{i:03d}.warc.gz"
        buf = io.BytesIO()
        writer = WARCWriter(buf, gzip=True, warc_version="WARC/1.0")
        for d in part:
            meta = base_meta(pk, d)
            mtime = meta.pop("mtime")
            charset = meta["charset"]
            http = StatusAndHeaders("200 OK", [
                ("Content-Type", f"text/html; charset={charset}"),
                ("Content-Length", str(len(d.payload))),
                ("Last-Modified", _http_date(mtime)),
            ], protocol="HTTP/1.1")
            wh = {
                "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, d.url)}>",
                "WARC-Date": _warc_date(mtime),
                "WARC-Lmhpc-Id": d.id,
                "WARC-Lmhpc-Package": f"{meta['package']} {meta['package_version']}",
                "WARC-Lmhpc-License": meta["license"],
                "WARC-Lmhpc-Lang": d.lang or "",
            }
            rec = writer.create_warc_record(d.url, "response", payload=io.BytesIO(d.payload),
                                            length=len(d.payload), http_headers=http,
                                            warc_headers_dict=wh)
            writer.write_record(rec)
            prov.append({"id": d.id, "url": d.url, "source": "web", "warc_file": rel,
                         "metadata": meta | {"http_last_modified": _http_date(mtime)}})
        data = buf.getvalue()
        (out / rel).write_bytes(data)
        files.append({"path": rel, "format": "warc.gz", "source": "web", "documents": len(part),
                      "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "ids": [d.id for d in part]})
        log(f"  {rel}: {len(part)} records, {len(data)} bytes")
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prov).encode()
    data = compress(lines, ".zst")
    (out / "web" / "provenance.jsonl.zst").write_bytes(data)
    files.append({"path": "web/provenance.jsonl.zst", "format": "jsonl.zst", "source": "web",
                  "documents": 0, "records": len(prov), "bytes": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "role": "provenance sidecar", "ids": []})
    return files, prov


# --------------------------------------------------------------------------------------------
# Manifest and README
# --------------------------------------------------------------------------------------------

def tool_versions(pk: Packages) -> dict:
    v = {n: pk.status[n]["version"] for n in ("man-db", "groff-base", "base-files") if n in pk.status}
    v["python"] = sys.version.split()[0]
    v["zstandard"] = zstandard.__version__
    try:
        v["debian"] = Path("/etc/debian_version").read_text().strip()
    except OSError:
        pass
    return v


def build_date() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    now = _dt.datetime.fromtimestamp(int(sde), _dt.UTC) if sde else _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y-%m-%d")


def make_manifest(pk: Packages, records: list[dict], files: list[dict], out: Path) -> dict:
    by_source: dict = {}
    by_lang: dict = {}
    by_source_lang: dict = {}
    pkg_docs: dict = {}
    text_bytes = 0
    truncated = 0
    for r in records:
        s, lang = r["source"], r["metadata"].get("lang", "und")
        n = r["_bytes"]
        text_bytes += n
        bs = by_source.setdefault(s, {"documents": 0, "text_bytes": 0})
        bs["documents"] += 1
        bs["text_bytes"] += n
        bl = by_lang.setdefault(lang, {"documents": 0, "text_bytes": 0})
        bl["documents"] += 1
        bl["text_bytes"] += n
        by_source_lang.setdefault(s, {}).setdefault(lang, 0)
        by_source_lang[s][lang] += 1
        pkg_docs[r["metadata"]["package"]] = pkg_docs.get(r["metadata"]["package"], 0) + 1
        truncated += bool(r["metadata"].get("truncated"))
    packages = []
    for name in sorted(pkg_docs):
        info = pk.get(name)
        packages.append({"name": name, "version": info.version, "source_package": info.source,
                         "license": info.license, "license_origin": info.license_origin,
                         "documents": pkg_docs[name]})
    compressed = sum(f["bytes"] for f in files)
    return {
        "name": "lmhpc-sample",
        "description": "Sample corpus assembled from texts shipped in Debian packages",
        "build_date": build_date(),
        "builder": "tools/build_sample_corpus.py",
        "url_scheme": {"jsonl": "deb://<binary-package>/<path inside the package, without leading slash>",
                       "warc": WEB_URL_PREFIX + "<binary-package>/<path inside the package, without leading slash>",
                       "id": "sha1 hex of the deb:// form"},
        "documents": len(records),
        "text_bytes": text_bytes,
        "compressed_bytes": compressed,
        "truncated_documents": truncated,
        "max_text_bytes": MAX_TEXT_BYTES,
        "by_source": dict(sorted(by_source.items())),
        "by_lang": dict(sorted(by_lang.items(), key=lambda kv: (-kv[1]["documents"], kv[0]))),
        "by_source_lang": {s: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0])))
                           for s, v in sorted(by_source_lang.items())},
        "files": [{k: v for k, v in f.items() if k != "ids"} for f in files],
        "packages": packages,
        "tools": tool_versions(pk),
    }


def make_readme(man: dict) -> str:
    def fmt_mb(n):
        return f"{n / 1e6:.1f} MB"

    src_rows = "\n".join(
        f"| {s} | {v['documents']:,} | {fmt_mb(v['text_bytes'])} | "
        + ", ".join(f"{lang} {c:,}" for lang, c in man["by_source_lang"][s].items()) + " |"
        for s, v in man["by_source"].items())
    lang_rows = "\n".join(f"| {lang} | {v['documents']:,} | {fmt_mb(v['text_bytes'])} |"
                          for lang, v in man["by_lang"].items())
    pkg_rows = "\n".join(f"| {p['name']} | {p['version']} | {p['license']} | {p['documents']:,} |"
                         for p in man["packages"])
    file_rows = "\n".join(f"| `{f['path']}` | {f.get('documents') or f.get('records')} | {f['bytes']:,} |"
                          for f in man["files"])
    return f"""# Sample corpus

A small, real-text corpus that the pipeline's demo runs on (curate -> dedup -> tokenizer ->
tokenize -> pretrain): {man['documents']:,} documents, {fmt_mb(man['text_bytes'])} of text,
{fmt_mb(man['compressed_bytes'])} compressed.  Built {man['build_date']} by
`tools/build_sample_corpus.py` on Debian {man['tools'].get('debian', '?')}.

Everything here is text that ships in Debian (main) packages under licenses that allow
redistribution; each record names its package, version and license.  Nothing was generated or
duplicated on purpose: the exact and near duplicates in it are the ones the packages contain
(the same license text in many `copyright` files, modules vendored by both pip and setuptools,
manual chapters left untranslated in a translation, HTML and plain-text editions of one book, the
same header in many source files, ...).

## Layout

| file | documents | bytes |
| --- | ---: | ---: |
{file_rows}

* `prose/`, `code/`, `license/`: JSONL, one JSON object per line (UTF-8), compressed with
  zstandard (`.jsonl.zst`, one frame, level {ZSTD_LEVEL}) or gzip (`.jsonl.gz`, level 9, header mtime 0);
  `code/` alternates the two.
* `web/part-*.warc.gz`: WARC/1.0 `response` records (HTTP/1.1 headers + the HTML page), one gzip
  member per record.  `WARC-Target-URI` is the provenance URL (https form, see below); the
  records also carry
  `WARC-Lmhpc-Id`, `WARC-Lmhpc-Package` (name and version), `WARC-Lmhpc-License` and
  `WARC-Lmhpc-Lang`.  `WARC-Date` and `Last-Modified` are the file's modification time in the
  package.
* `web/provenance.jsonl.zst`: one line per WARC record, keyed by `url` (= `WARC-Target-URI`):
  `{{"id", "url", "source": "web", "warc_file", "metadata"}}`.
* `MANIFEST.json`: counts per source, language and file, sizes and sha256 of every file, the
  packages used with versions and licenses, tool versions and the build date.

## Record schema (JSONL)

```json
{{"id": "<sha1 of the deb:// url>", "text": "...", "source": "prose|code|license",
 "url": "deb://<package>/<path>",
 "metadata": {{"package": "manpages-de", "package_version": "4.18.1-1",
              "source_package": "manpages-l10n", "license": "GPL-3+",
              "license_origin": "debian/copyright (DEP-5, Files: *)",
              "path": "/usr/share/man/de/man1/ls.1.gz", "lang": "de", "...": "..."}}}}
```

* `source` is the domain: `web` (HTML pages, in the WARC files), `prose` (manual pages rendered to
  text, help pages, manuals, changelogs, READMEs), `code` (source files), `license` (license texts
  and per-package copyright files).
* `url`: `deb://<binary package>/<path inside the package>`; the version is in
  `metadata.package_version`.  `id` is the sha1 of that `deb://` url, so ids are stable across
  rebuilds and unique (one document per file).
* HTML pages use the same location in https form, `{WEB_URL_PREFIX}<binary package>/<path>`
  (a reserved domain that resolves nowhere), as `WARC-Target-URI` and as `url` in
  `web/provenance.jsonl.zst`: WARC readers such as warcio parse the HTTP headers of a
  `response` record only when its target URI is http(s).
* `metadata.lang` is an ISO 639-1 code.  `lang_source: "declared"`: the language the package or
  path declares (translation directory, locale, `-de`/`-fr` package); `locale` keeps the original
  tag (`pt_BR`, `de-DE`, `sr@latin`, ...).  A declared language is not a guarantee: translations
  ship untranslated (English) pages and paragraphs, as real collections do.
  `lang_source: "detected"`: no package declares it (copyright files, changelogs, READMEs), so
  py3langid chose it.  Code records have no `lang` and carry `programming_language` instead.
* `metadata.license` is the package's license: the `License` of the `Files: *` paragraph of a
  machine-readable `debian/copyright`, or read by hand where the file is free-form
  (`license_origin` says which).  Individual files may carry other compatible licenses listed in
  that copyright file.  `license_origin: "debian/copyright (text match)"` marks a best guess from
  the first license a free-form copyright file names; it occurs only for packages that contribute
  just their copyright file, which is itself a record under `license/`.
* `metadata.format`: `manpage` (rendered with man-db/groff at 80 columns, no hyphenation or
  justification), `mallard` (GNOME help page, XML stripped to paragraphs), `text`, `source`,
  `license-text`, `debian-copyright`, `html`.
* Text documents longer than {man['max_text_bytes'] // 1024} KiB are cut at a line boundary and carry
  `truncated: true` and `original_bytes` ({man['truncated_documents']} documents); HTML pages over 1 MiB
  are left out.  Binary and empty files are skipped.

## What was selected

Whole files, one document per file, never split or merged.  Per package, a deterministic subset
is kept (a hash of the language-independent relative path, so that where a page is kept it is
kept in every translation); longer documents are kept at lower rates so that the sample holds
many documents and still some long ones.  The fractions and size tiers are constants at the top
of the script.  Manual pages that only redirect to another page (`.so`) and symlinks are skipped.
GNOME help locales that are mostly untranslated are left out (see `HELP_LOCALES`).

## Counts

| source | documents | text | by language |
| --- | ---: | ---: | --- |
{src_rows}

| lang | documents | text |
| --- | ---: | ---: |
{lang_rows}

`und`: code records, which carry no natural language.

## Rebuilding

```sh
python tools/build_sample_corpus.py          # as root on Debian 12: installs the packages it reads
```

It runs `apt-get update` and `apt-get install --no-install-recommends` for the packages below,
renders the manual pages with `man`, and rewrites `data/sample/`.  With the same package versions
the data files come out byte-identical; `MANIFEST.json` then differs only in `build_date`
(set `SOURCE_DATE_EPOCH` to pin it).  `--no-install` skips apt and uses what is installed;
`--out DIR` writes elsewhere.

## Packages and licenses

| package | version | license | documents |
| --- | --- | --- | ---: |
{pkg_rows}

The license texts named above are in `/usr/share/common-licenses` on any Debian system, and most of
them are in this corpus under `license/` (records from `base-files`).
"""


# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-install", action="store_true", help="skip apt-get; use installed packages")
    ap.add_argument("--jobs", type=int, default=2 * (os.cpu_count() or 2), help="parallel man renderers")
    args = ap.parse_args(argv)

    web_pkgs = [s[0] for s in WEB_SPECS]
    code_pkgs = [s[0] for s in CODE_SPECS]
    text_pkgs = [s[0] for s in TEXT_SPECS]
    content = sorted(set(MAN_PACKAGES + HELP_PACKAGES + web_pkgs + code_pkgs + text_pkgs))
    wanted = sorted(set(content + WEB_EXTRA_INSTALL + LICENSE_EXTRA_PACKAGES + ["base-files", "man-db", "groff-base"]))
    if not args.no_install:
        install_packages(wanted)
    pk = Packages()
    missing = [p for p in content if not pk.installed(p)]
    if missing:
        log(f"error: not installed: {' '.join(missing)}")
        return 1

    closure = pk.closure(wanted)
    log(f"{len(content)} content packages, {len(closure)} packages in the dependency closure")

    docs: list[Doc] = []
    docs += collect_web(pk)
    log(f"web: {len(docs)} pages")
    n = len(docs)
    docs += collect_man(pk, args.jobs)
    docs += collect_help(pk)
    docs += collect_textdocs(pk, content)
    log(f"prose: {len(docs) - n}")
    n = len(docs)
    docs += collect_code(pk)
    log(f"code: {len(docs) - n}")
    n = len(docs)
    docs += collect_licenses(pk, closure, content)
    log(f"license: {len(docs) - n}")

    # One document per file; order by source, package, path.
    uniq: dict[str, Doc] = {}
    for d in docs:
        uniq.setdefault(d.deb_url, d)
    docs = sorted(uniq.values(), key=lambda d: (d.source, d.package, d.path))

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    files: list[dict] = []
    records_for_manifest: list[dict] = []
    web_docs = [d for d in docs if d.source == "web"]
    wfiles, prov = write_warc(out, pk, web_docs)
    files += wfiles
    for d, p in zip(web_docs, prov):
        records_for_manifest.append({"source": "web", "metadata": p["metadata"], "_bytes": len(d.payload)})
    for source in ("prose", "code", "license"):
        recs = [to_record(pk, d) for d in docs if d.source == source]
        files += write_jsonl(out, source, recs)
        for r in recs:
            records_for_manifest.append({"source": source, "metadata": r["metadata"],
                                         "_bytes": len(r["text"].encode("utf-8"))})

    manifest = make_manifest(pk, records_for_manifest, files, out)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    (out / "README.md").write_text(make_readme(manifest))
    log(f"wrote {manifest['documents']} documents, {manifest['compressed_bytes']} bytes compressed to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
