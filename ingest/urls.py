"""Which stream URLs may reach FFmpeg, what FFmpeg may do with them, and how to log them.

Only `rtsp`, `rtsps`, `http`, `https` and (when the worker allows it) local files are
accepted. Each accepted URL comes with FFmpeg's `protocol_whitelist` and `format_whitelist`
for its scheme, so a crafted stream (an HLS playlist whose entries point at `file:` or a
`concat:` list, an SDP file, ...) cannot make FFmpeg read local files or speak other
protocols. `redact_url` and `scrub_secrets` keep credentials out of every output (logs,
status, DLQ, CLI errors); `redact_record_value` cleans a rejected record for the DLQ.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

LIVE_SCHEMES = ("rtsp", "rtsps")
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
ALLOWED_DESCRIPTION = (
    "rtsp://, rtsps://, http://, https:// (and file: or a local path where allowed)"
)

# FFmpeg protocols each scheme needs, and nothing more (verified by opening each).
PROTOCOL_WHITELISTS: dict[str, str] = {
    "rtsp": "rtsp,rtp,udp,tcp",
    "rtsps": "rtsp,rtsps,rtp,srtp,udp,tcp,tls",
    "http": "http,https,tls,tcp,crypto",
    "https": "https,tls,tcp,crypto",
    "file": "file",
}

# Demuxers we hand media to. Local files never get a playlist/list demuxer (hls, concat,
# sdp, ...) even when their content is crafted to be probed as one.
_MEDIA_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "mpegts",
    "flv",
    "avi",
    "h264",
    "hevc",
    "mjpeg",
    "mpjpeg",
)
FORMAT_WHITELISTS: dict[str, str] = {
    "rtsp": "rtsp",
    "rtsps": "rtsp",
    "http": ",".join((*_MEDIA_DEMUXERS, "hls")),
    "https": ",".join((*_MEDIA_DEMUXERS, "hls")),
    "file": ",".join(_MEDIA_DEMUXERS),
}

_PLAYLIST_SUFFIXES = (".m3u8", ".m3u", ".ffconcat", ".concat", ".sdp", ".pls", ".txt")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# `scheme://` (also JSON-escaped `scheme:\/\/`), or `scheme:` of a scheme we know.
_HEAD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:(?://|\\/\\/)")
_KNOWN_SCHEMES = frozenset({*PROTOCOL_WHITELISTS, "redis", "rediss", "kafka"})
# A URL inside free text: from its scheme to the next whitespace.
# The lookbehind starts a match only where a scheme can start: without it a long run of
# letters is rescanned from every position (quadratic: 27 s for a 200 kB label).
_URL_IN_TEXT_RE = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*:(?://|\\/\\/)\S*")
_SECRET_KEY_RE = re.compile(
    r"(token|key|secret|pass|pwd|auth|sig|signature|credential|session|jwt|code)", re.I
)
# `password=...`, `"api_key": "..."`, `token: ...` in free text (a DLQ value that is not JSON).
# The key and value runs are possessive (`++`) so a long run without a separator is
# scanned once, not from every position (a hostile DLQ value must not cost minutes).
_ASSIGNMENT_RE = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<key>[A-Za-z0-9_.\-]++)"
    r"(?P<sep>\\?\"?\s*+[=:]\s*+\\?\"?)(?P<value>(?:\\.|[^\s\"\\])++)"
)
_ASSIGNED_SECRET_KEY_RE = re.compile(
    r"token|key|secret|pass|pwd|auth|sig|credential|session|jwt", re.I
)
_MAX_URL_CHARS = 4096
_SHOWN_CHARS = 200  # a refused URL is shown redacted and cut to this many characters
_HIDDEN = "***"


class UnsupportedURLError(ValueError):
    """The URL is not one facestream may open; the message (redacted) says what is allowed."""


@dataclass(frozen=True)
class SourceURL:
    """An accepted stream URL: its scheme, what to hand FFmpeg, and how to show it.

    `str()` and `repr()` give the redacted form only; `ffmpeg_url` may hold credentials.
    """

    scheme: str
    ffmpeg_url: str = field(repr=False)
    is_live: bool
    redacted: str

    @property
    def is_file(self) -> bool:
        return self.scheme == "file"

    @property
    def protocol_whitelist(self) -> str:
        """FFmpeg `protocol_whitelist` for this scheme."""
        return PROTOCOL_WHITELISTS[self.scheme]

    @property
    def format_whitelist(self) -> str:
        """FFmpeg `format_whitelist` (allowed demuxers) for this scheme."""
        return FORMAT_WHITELISTS[self.scheme]

    def __str__(self) -> str:
        return self.redacted


@dataclass(frozen=True)
class _URLParts:
    """A URL cut the way redaction needs it; `userinfo` is everything that may be credentials."""

    head: str  # "rtsp://" (or "" for text without a scheme)
    userinfo: str  # "" when there is no '@'
    ambiguous: bool  # the last '@' comes after a '?' or '#': nothing after `head` is shown
    rest: str  # host, path, query, fragment after the userinfo


def _cut(url: str) -> _URLParts:
    """Split off the userinfo: everything between `scheme://` and the LAST '@'.

    Passwords are often pasted unencoded, so '/', '?', '#', ':', ';' and '@' may all occur
    in one; the last '@' is the only reliable end. When a '?' or '#' comes before it, the
    '@' may as well sit inside a query value or fragment (a token), so nothing after the
    scheme can be shown safely: the URL is then hidden whole. Over-redacting is harmless.
    """
    match = _HEAD_RE.match(url) or _SCHEME_RE.match(url)
    head = match.group(0) if match else ""
    if match and not head.endswith("/") and match.group(0)[:-1].lower() not in _KNOWN_SCHEMES:
        head = ""  # "user:pw@host" is not a scheme "user"
    body = url[len(head) :]
    if "@" not in body:
        return _URLParts(head, "", False, body)
    userinfo, _, rest = body.rpartition("@")
    ambiguous = "?" in userinfo or "#" in userinfo
    return _URLParts(head, userinfo, ambiguous, "" if ambiguous else rest)


def _query_pairs(query: str) -> list[tuple[str, str, str]]:
    """(key, '=', value) per parameter; both '&' and ';' separate (some cameras use ';')."""
    return [part.partition("=") for part in re.split(r"[&;]", query)]


def _redact_query(query: str) -> str:
    """The query with token-like values hidden up to the next '&'; the rest as written.

    A secret value ends only at '&' (not at ';'): an unencoded ';' inside a token must not
    show its tail; `user=a;password=b` still reads `user=a;password=***`.
    """
    params = query.split("&")
    for i, param in enumerate(params):
        subparams = param.split(";")
        for j, sub in enumerate(subparams):
            key, eq, _value = sub.partition("=")
            if eq and _SECRET_KEY_RE.search(unquote_plus(key)):
                params[i] = ";".join([*subparams[:j], f"{key}={_HIDDEN}"])
                break
    return "&".join(params)


def redact_url(url: str) -> str:
    """`url` without credentials: the userinfo, token-like query values and the fragment.

    `rtsp://admin:pw@cam/live?token=x&ch=1#k` reads `rtsp://***@cam/live?token=***&ch=1#***`.
    Control characters and whitespace become `_`. Safe on any string, of any length.
    """
    text = "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in str(url))
    parts = _cut(text)
    if parts.ambiguous:
        return f"{parts.head}{_HIDDEN}"
    rest, hash_sign, fragment = parts.rest.partition("#")
    base, question_mark, query = rest.partition("?")
    shown = f"{parts.head}{_HIDDEN + '@' if parts.userinfo else ''}{base}"
    if question_mark:
        shown += f"?{_redact_query(query)}"
    if hash_sign:
        shown += f"#{_HIDDEN}" if fragment else "#"
    return shown


def _secrets_of(url: str) -> list[str]:
    """Userinfo parts, secret query values and the fragment of `url`, raw and decoded."""
    parts = _cut(url)
    found: list[str] = [parts.userinfo, *parts.userinfo.split(":", 1)] if parts.userinfo else []
    if parts.ambiguous:
        found.append(url[len(parts.head) :])
    rest, _, fragment = parts.rest.partition("#")
    query = rest.partition("?")[2]
    for param in query.split("&"):
        for j, sub in enumerate(subs := param.split(";")):
            key, eq, value = sub.partition("=")
            if eq and _SECRET_KEY_RE.search(unquote_plus(key)):
                found.append(";".join([value, *subs[j + 1 :]]))
                break
    found.append(fragment)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub_secrets(text: str, url: str | None = None) -> str:
    """`text` (a log line, an FFmpeg error) with every URL in it redacted by `redact_url`.

    When the `url` it is about is given, that URL's secrets (userinfo parts, token values,
    fragment; raw and percent-decoded, 3 characters or more) are hidden wherever they occur.
    This is the one function every output (logs, status, DLQ, CLI errors) goes through.
    """
    text = str(text)
    if url:
        text = text.replace(url, redact_url(url))
        for secret in _secrets_of(url):
            text = text.replace(secret, _HIDDEN)
    return _URL_IN_TEXT_RE.sub(lambda match: redact_url(match.group(0)), text)


def shorten(text: str, limit: int = _SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters with a note of the full length (cut after redacting)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


def redact_record_value(raw: bytes | str | None) -> bytes | str | None:
    """A rejected record's key or value (JSON text or any bytes) with credentials hidden.

    JSON: every string anywhere goes through `scrub_secrets` (so a `url` field, or a URL in
    a label, is redacted) and the value of any key that looks like a secret (`password`,
    `api_key`, `token`, ...) becomes `***`. Anything else (broken JSON, non-UTF-8 bytes):
    URL-looking runs and `secret=value` / `"secret": "value"` pairs are hidden in the text;
    bytes that are not UTF-8 are kept as they were. Returns the same type it was given.
    """
    if raw is None:
        return None
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="surrogateescape")
        return _redact_record_text(text).encode("utf-8", errors="surrogateescape")
    return _redact_record_text(raw)


def _redact_record_text(text: str) -> str:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    else:
        if isinstance(document, dict | list | str):
            redacted = _redact_json(document)
            # Unchanged records stay byte-for-byte as they were (a DLQ reader sees the original).
            return text if redacted == document else json.dumps(redacted, ensure_ascii=False)
    text = scrub_secrets(text)
    return _hide_secret_assignments(text)


def _hide_secret_assignments(text: str) -> str:
    """`password=...`, `"api_key": "..."`, `token: ...` with the value hidden."""

    def hide(match: re.Match[str]) -> str:
        if _ASSIGNED_SECRET_KEY_RE.search(match["key"]) is None:
            return match.group(0)
        return f"{match['key']}{match['sep']}{_HIDDEN}"

    return _ASSIGNMENT_RE.sub(hide, text)


def _redact_json(node: Any) -> Any:
    if isinstance(node, str):
        return _hide_secret_assignments(scrub_secrets(node))
    if isinstance(node, list):
        return [_redact_json(item) for item in node]
    if isinstance(node, dict):
        return {
            key: _HIDDEN
            if _SECRET_KEY_RE.search(str(key)) and not isinstance(value, dict | list)
            else _redact_json(value)
            for key, value in node.items()
        }
    return node


def _refuse(url: str, reason: str) -> UnsupportedURLError:
    shown = shorten(redact_url(url))  # redact the whole URL first, then cut
    return UnsupportedURLError(
        f"refusing source URL {shown!r}: {reason}; allowed: {ALLOWED_DESCRIPTION}"
    )


def _check_local_path(url: str, path: str) -> SourceURL:
    if not path:
        raise _refuse(url, "empty file path")
    if path.lower().endswith(_PLAYLIST_SUFFIXES):
        raise _refuse(url, "local playlists and list files are not accepted")
    absolute = os.path.abspath(path)
    if os.path.exists(absolute) and not os.path.isfile(absolute):
        # A FIFO would block FFmpeg's open(2) for ever; devices and folders are not videos.
        raise _refuse(url, "not a regular file (a FIFO, device or folder)")
    # "file:" keeps a local name that looks like "x:y" from being read as a protocol.
    return SourceURL("file", "file:" + absolute, is_live=False, redacted=absolute)


def check_source_url(url: str, allow_file: bool) -> SourceURL:
    """Accept `url` as a stream source or raise `UnsupportedURLError` (message redacted)."""
    if not isinstance(url, str) or not url:
        raise _refuse(str(url), "the URL is empty")
    if len(url) > _MAX_URL_CHARS:
        raise _refuse(url, f"longer than {_MAX_URL_CHARS} characters")
    if any(not ch.isprintable() or ch.isspace() for ch in url):
        raise _refuse(url, "it contains whitespace or control characters")
    match = _SCHEME_RE.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme in NETWORK_SCHEMES:
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError on a malformed port
        except ValueError:
            # urlsplit's message quotes the netloc or a port made of a password's start.
            raise _refuse(url, "malformed URL (check the host, port and brackets)") from None
        if not url[len(scheme) :].startswith("://") or not parts.hostname:
            raise _refuse(url, "the host is empty")
        ffmpeg_url = scheme + url[len(scheme) :]
        return SourceURL(scheme, ffmpeg_url, scheme in LIVE_SCHEMES, redact_url(url))
    if scheme == "file" or not scheme:
        if not allow_file:
            raise _refuse(url, "local files are not allowed on this worker")
        if not scheme:
            if ":" in url.partition("/")[0]:
                # FFmpeg would read "proto,opts:..." as a protocol (e.g. subfile,,start,0,...:).
                raise _refuse(url, "it looks like an FFmpeg protocol; write file:///path")
            return _check_local_path(url, url)
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise _refuse(url, "file URLs must be file:///absolute/path")
        path = unquote(parts.path)
        if any(not ch.isprintable() for ch in path):
            # A decoded NUL would cut the name FFmpeg sees (and dodge the playlist check).
            raise _refuse(url, "the path contains control characters")
        return _check_local_path(url, path)
    raise _refuse(url, f"scheme {scheme!r} is not accepted")
