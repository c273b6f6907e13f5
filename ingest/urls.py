"""Which stream URLs may reach FFmpeg, what FFmpeg may do with them, and how to log them.

Only `rtsp`, `rtsps`, `http`, `https` and (when the worker allows it) local files are
accepted. Each accepted URL comes with FFmpeg's `protocol_whitelist` and `format_whitelist`
for its scheme, so a crafted stream (an HLS playlist whose entries point at `file:` or a
`concat:` list, an SDP file, ...) cannot make FFmpeg read local files or speak other
protocols. `redact_url` and `scrub_secrets` keep credentials out of logs and errors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
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
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s?#]*@")
_AUTHORITY_RE = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/]*)(?P<rest>.*)$", re.S
)
_SECRET_KEY_RE = re.compile(
    r"(token|key|secret|pass|pwd|auth|sig|signature|credential|session|jwt|code)", re.I
)
_MAX_URL_CHARS = 4096


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


def _query_pairs(query: str) -> list[tuple[str, str, str]]:
    """(key, '=', value) per parameter; both '&' and ';' separate (some cameras use ';')."""
    return [part.partition("=") for part in re.split(r"[&;]", query)]


def _redact_query(query: str) -> str:
    """The query with token-like values replaced by `***`; everything else as written."""
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        key, eq, _value = parts[i].partition("=")
        if eq and _SECRET_KEY_RE.search(unquote_plus(key)):
            parts[i] = f"{key}=***"
    return "".join(parts)


def _split_userinfo(url: str) -> tuple[str, str, str]:
    """(`scheme://`, userinfo or "", the rest after `@`); the authority ends at the first '/'.

    Done by hand because an unencoded '?', '#' or ':' in a password confuses `urlsplit`.
    An '@' later in the path (before any '?' or '#') is taken as the end of a userinfo
    too: a password with an unencoded '/' must not show, and over-redacting is harmless.
    """
    match = _AUTHORITY_RE.match(url)
    if not match:
        return "", "", url
    authority, rest = match.group("authority"), match.group("rest")
    if "@" not in authority:
        head = re.split(r"[?#]", authority + rest, maxsplit=1)[0]
        if "@" not in head:
            return "", "", url
        authority, rest = head, (authority + rest)[len(head) :]
    userinfo, _, host = authority.rpartition("@")
    return match.group("scheme"), userinfo, host + rest


def redact_url(url: str) -> str:
    """`url` without user:password and without token-like query values (`rtsp://***@cam/x`)."""
    text = "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in str(url))
    scheme, userinfo, rest = _split_userinfo(text)
    prefix = f"{scheme}***@" if userinfo else ""
    base, sep, query = rest.partition("?")
    if sep:
        fragment_sep = "#" if "#" in query else ""
        query, _, fragment = query.partition("#")
        rest = f"{base}?{_redact_query(query)}{fragment_sep}{fragment}"
    return _USERINFO_RE.sub(r"\g<scheme>***@", prefix + rest)


def _secrets_of(url: str) -> list[str]:
    """Userinfo parts and secret query values of `url`, raw and percent-decoded."""
    _, userinfo, rest = _split_userinfo(url)
    found: list[str] = [userinfo, *userinfo.split(":", 1)] if userinfo else []
    query = rest.partition("?")[2].partition("#")[0]
    found += [
        v for k, eq, v in _query_pairs(query) if eq and _SECRET_KEY_RE.search(unquote_plus(k))
    ]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub_secrets(text: str, url: str | None = None) -> str:
    """`text` (e.g. an FFmpeg error) with `url` redacted and any `scheme://user@` removed."""
    if url:
        text = text.replace(url, redact_url(url))
        for secret in _secrets_of(url):
            text = text.replace(secret, "***")
    return _USERINFO_RE.sub(r"\g<scheme>***@", text)


def _refuse(url: str, reason: str) -> UnsupportedURLError:
    return UnsupportedURLError(
        f"refusing source URL {redact_url(url)!r}: {reason}; allowed: {ALLOWED_DESCRIPTION}"
    )


def _check_local_path(url: str, path: str) -> SourceURL:
    if not path:
        raise _refuse(url, "empty file path")
    if path.lower().endswith(_PLAYLIST_SUFFIXES):
        raise _refuse(url, "local playlists and list files are not accepted")
    absolute = os.path.abspath(path)
    # "file:" keeps a local name that looks like "x:y" from being read as a protocol.
    return SourceURL("file", "file:" + absolute, is_live=False, redacted=absolute)


def check_source_url(url: str, allow_file: bool) -> SourceURL:
    """Accept `url` as a stream source or raise `UnsupportedURLError` (message redacted)."""
    if not isinstance(url, str) or not url:
        raise _refuse(str(url), "the URL is empty")
    if len(url) > _MAX_URL_CHARS:
        raise _refuse(url[:200], f"longer than {_MAX_URL_CHARS} characters")
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
