"""URL policy: which sources reach FFmpeg, the whitelists FFmpeg gets, and redaction."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.sources import CorruptSourceError, SourceError, SourceOptions, VideoSource
from ingest.urls import (
    PROTOCOL_WHITELISTS,
    UnsupportedURLError,
    check_source_url,
    redact_record_value,
    redact_url,
    scrub_secrets,
)
from tests.services.rtsp import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@cam.local:554/live?x=1", "rtsp://***@cam.local:554/live?x=1"),
        ("rtsp://admin@cam.local/live", "rtsp://***@cam.local/live"),
        ("https://cdn.example/a.m3u8?token=abc123&q=2", "https://cdn.example/a.m3u8?token=***&q=2"),
        ("http://h/x?api_key=s3cr3t", "http://h/x?api_key=***"),
        ("rtsp://cam.local/live", "rtsp://cam.local/live"),
        ("rtsp://admin:zq/xk99@cam.local/live", "rtsp://***@cam.local/live"),
        ("rtsp://cam/live?user=a;password=b", "rtsp://cam/live?user=a;password=***"),
        ("http://h/x?Pass%77ord=a%20b&y=2", "http://h/x?Pass%77ord=***&y=2"),
        ("/videos/a.mp4", "/videos/a.mp4"),
    ],
)
def test_redact_url_removes_credentials_and_tokens(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_handles_unparseable_urls_without_leaking() -> None:
    redacted = redact_url("rtsp://user:pa ss?#@[::1:554/x")
    assert "pa ss" not in redacted and "pa?ss" not in redacted and "user" not in redacted


def test_scrub_secrets_removes_url_and_decoded_password_from_text() -> None:
    url = "rtsp://bob:p%40ss%3Aw0rd@cam/x?token=tok123"
    text = f"Connection refused: '{url}' (user bob, password p@ss:w0rd, token tok123)"
    scrubbed = scrub_secrets(text, url)
    for secret in ("p%40ss%3Aw0rd", "p@ss:w0rd", "tok123", "bob:"):
        assert secret not in scrubbed
    assert "rtsp://***@cam/x" in scrubbed


# -- redaction properties ------------------------------------------------------------------
# Secrets are drawn from capital letters (which nothing else in the generated URLs uses) and
# the characters that break naive parsers; a capital letter in the output is a leak.
_MARKERS = "QXZJKW"
_SECRET_ALPHABET = _MARKERS + "/?#@:;%&=+$!*'(),[]~"
_secret = st.text(_SECRET_ALPHABET, min_size=1, max_size=24).filter(
    lambda s: any(ch in _MARKERS for ch in s)
)
_query_secret = _secret.map(lambda s: s.replace("&", "")).filter(
    lambda s: any(ch in _MARKERS for ch in s)
)
_plain = st.text("abcdefghijklmnop0123456789-.", min_size=1, max_size=12)
_secret_key = st.sampled_from(["token", "password", "api_key", "sig", "auth", "Session"])


def _assert_no_secret(shown: str) -> None:
    leaked = [ch for ch in _MARKERS if ch in shown]
    assert not leaked, f"secret characters {leaked} survived: {shown!r}"


@pytest.mark.timeout(300)
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(["rtsp", "rtsps", "http", "https", "redis"]),
    user=st.one_of(st.none(), _secret),
    password=st.one_of(st.none(), _secret),
    host=_plain,
    path=st.lists(_plain, max_size=3),
    key=_secret_key,
    value=st.one_of(st.none(), _query_secret),
    plain_query=st.lists(st.tuples(_plain, _plain), max_size=2),
    fragment=st.one_of(st.none(), _secret),
    padding=st.integers(0, 6000),
)
def test_redaction_never_shows_a_secret(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    path: list[str],
    key: str,
    value: str | None,
    plain_query: list[tuple[str, str]],
    fragment: str | None,
    padding: int,
) -> None:
    userinfo = ""
    if user is not None or password is not None:
        userinfo = (user or "") + (f":{password}" if password is not None else "") + "@"
    query = [f"{k}={v}" for k, v in plain_query]
    if value is not None:
        query.insert(len(query) // 2, f"{key}={value}")
    if padding:
        query.append("pad=" + "a" * padding)  # long URLs, also over 4,096 characters
    url = f"{scheme}://{userinfo}{host}/{'/'.join(path)}"
    url += ("?" + "&".join(query) if query else "") + (f"#{fragment}" if fragment else "")

    _assert_no_secret(redact_url(url))
    _assert_no_secret(scrub_secrets(f"error opening '{url}': Connection refused", url))
    _assert_no_secret(scrub_secrets(f"opening {url} failed"))  # no hint which URL it is
    _assert_no_secret(redact_record_value(json.dumps({"stream_id": "s", "url": url})))
    _assert_no_secret(redact_record_value(f'{{"url": "{url}", broken'.encode()).decode())
    if scheme != "redis":
        try:
            source = check_source_url(url, allow_file=False)
        except UnsupportedURLError as refused:
            _assert_no_secret(str(refused))
        else:
            _assert_no_secret(f"{source} {source!r}")


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://admin:pa/ss?wQRd@cam/live",  # '/' then '?' in the password
        "rtsp://admin:pa/ss#wQRd@cam/live",  # '/' then '#'
        "rtsp://admin:a@b?QX@cam/live",
        "http://cam/live?token=QXab@cd",  # '@' inside a token: its tail must not show
        "http://cam/live?token=QXa;bQX&ch=1",  # ';' inside a token
        "rtsp:admin:QX@cam/live",  # no '//'
        "rtsp://cam/live#access_token=QX",
    ],
)
def test_redact_url_hides_passwords_with_unencoded_separators(url: str) -> None:
    shown = redact_url(url)
    assert "QX" not in shown and "wQRd" not in shown
    assert shown.startswith(url.split(":", 1)[0] + ":")


def test_refused_long_url_shows_no_unredacted_prefix() -> None:
    url = "rtsp://admin:pa/ss?SECRETSECRET@cam/live?" + "x=1&" * 1200
    assert len(url) > 4096
    with pytest.raises(UnsupportedURLError, match="longer than 4096") as caught:
        check_source_url(url, allow_file=False)
    message = str(caught.value)
    assert "SECRET" not in message and "pa/ss" not in message and "admin" not in message
    assert len(message) < 400


def test_redact_record_value_hides_url_credentials_and_secret_fields() -> None:
    record = {
        "stream_id": "lobby",
        "url": "rtsp://viewer:pa/ss?wd@10.0.0.12/stream1",
        "labels": {"api_key": "k-123456", "note": "mirror at http://bob:hunter22@mirror/x"},
        "tasks": ["emotion"],
    }
    shown = redact_record_value(json.dumps(record).encode())
    assert isinstance(shown, bytes)
    document = json.loads(shown)
    assert document["stream_id"] == "lobby" and document["tasks"] == ["emotion"]
    assert document["labels"]["api_key"] == "***"
    for secret in (b"viewer", b"pa/ss", b"k-123456", b"bob", b"hunter22"):
        assert secret not in shown


def test_redact_record_value_cleans_broken_json_and_keeps_non_utf8_bytes() -> None:
    raw = b'\xff{"url": "rtsp://u:hunter22@cam/x", "password": "p,w;d" \xfe'
    shown = redact_record_value(raw)
    assert isinstance(shown, bytes)
    assert b"hunter22" not in shown and b"p,w;d" not in shown
    assert shown.startswith(b"\xff") and shown.endswith(b"\xfe")
    assert redact_record_value(None) is None


@pytest.mark.parametrize(
    ("url", "scheme", "is_live"),
    [
        ("rtsp://cam.local:554/live", "rtsp", True),
        ("RTSPS://cam.local/live", "rtsps", True),
        ("http://cdn.example/live.m3u8", "http", False),
        ("https://cdn.example/vod.mp4", "https", False),
    ],
)
def test_network_urls_are_accepted_with_their_whitelist(
    url: str, scheme: str, is_live: bool
) -> None:
    source = check_source_url(url, allow_file=False)
    assert source.scheme == scheme
    assert source.is_live is is_live
    assert source.protocol_whitelist == PROTOCOL_WHITELISTS[scheme]
    assert "file" not in source.protocol_whitelist.split(",")
    assert source.ffmpeg_url.lower() == url.lower()


def test_source_url_repr_and_str_hide_credentials() -> None:
    source = check_source_url("rtsp://u:topsecret@cam/x", allow_file=False)
    assert "topsecret" not in repr(source) and "topsecret" not in str(source)
    assert source.ffmpeg_url == "rtsp://u:topsecret@cam/x"


@pytest.mark.parametrize(
    "url",
    [
        "concat:/etc/passwd|/etc/hosts",
        "subfile,,start,0,end,100,,:/etc/passwd",
        "data:video/mp4;base64,AAAA",
        "pipe:0",
        "tcp://127.0.0.1:9/x",
        "udp://127.0.0.1:9",
        "rtmp://host/app",
        "ftp://host/a.mp4",
        "gopher://host/x",
        "crypto+file:///etc/passwd",
        "hls+http://host/a.m3u8",
        "",
        "rtsp://",
        "rtsp:///path-without-host",
        "http://:80/x",
        "rtsp://cam/live x",
        "rtsp://cam/live\n",
        "rtsp://cam/\x00live",
        " rtsp://cam/live",
        "rtsp://cam:notaport/live",
    ],
)
def test_refused_urls_raise_unsupported_url_error(url: str) -> None:
    with pytest.raises(UnsupportedURLError, match="allowed: rtsp://"):
        check_source_url(url, allow_file=True)


def test_refusal_message_is_redacted() -> None:
    with pytest.raises(UnsupportedURLError) as caught:
        check_source_url("rtmp://admin:s3cr3t@cam/live", allow_file=False)
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("url", ["/videos/a.mp4", "file:///videos/a.mp4", "clip.mp4"])
def test_local_files_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UnsupportedURLError, match="local files are not allowed"):
        check_source_url(url, allow_file=False)
    source = check_source_url(url, allow_file=True)
    assert source.scheme == "file" and not source.is_live
    assert source.ffmpeg_url.startswith("file:/")
    assert source.protocol_whitelist == "file"


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://admin:zq/xk99@cam/live",  # unencoded '/': urlsplit reads "zq" as the port
        "rtsp://admin:zq\uff20xk99@cam/live",  # NFKC '@': urlsplit quotes the netloc
    ],
)
def test_malformed_url_refusal_does_not_quote_the_password(url: str) -> None:
    with pytest.raises(UnsupportedURLError, match="malformed") as caught:
        check_source_url(url, allow_file=False)
    for secret in ("admin", "zq", "xk99"):
        assert secret not in str(caught.value)


def test_file_url_whose_decoded_path_has_a_nul_is_refused() -> None:
    # FFmpeg would see "/tmp/list.m3u8" while the suffix check saw ".mp4".
    with pytest.raises(UnsupportedURLError, match="control characters"):
        check_source_url("file:///tmp/list.m3u8%00.mp4", allow_file=True)


@pytest.mark.parametrize(
    "url", ["/tmp/list.m3u8", "file:///tmp/list.M3U", "/tmp/x.ffconcat", "/tmp/s.sdp"]
)
def test_local_playlists_are_refused_even_when_files_are_allowed(url: str) -> None:
    with pytest.raises(UnsupportedURLError, match="playlists"):
        check_source_url(url, allow_file=True)


def test_file_url_with_a_remote_host_is_refused() -> None:
    with pytest.raises(UnsupportedURLError, match="file:///"):
        check_source_url("file://otherhost/etc/passwd", allow_file=True)


# -- the whitelists against a real FFmpeg --------------------------------------------------


def _write_ts_segment(path: Path, frames: int = 10) -> None:
    """A tiny H.264 MPEG-TS segment (64x64 grey frames)."""
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 10)
        for i in range(frames):
            image = np.full((64, 64, 3), 40 + 10 * i, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _playlist(entry: str) -> str:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.0,\n{entry}\n#EXT-X-ENDLIST\n"
    )


@pytest.fixture
def hls_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder with an H.264 segment, served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    _write_ts_segment(tmp_path / "seg0.ts")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


_FAST = SourceOptions(open_timeout_s=5, read_timeout_s=5, give_up_after_failures=1)


def test_hls_over_http_decodes_with_the_http_whitelist(hls_dir: tuple[Path, str]) -> None:
    folder, base = hls_dir
    (folder / "ok.m3u8").write_text(_playlist("seg0.ts"))
    frames = list(VideoSource(f"{base}/ok.m3u8", _FAST).frames())
    assert len(frames) >= 2


def test_http_playlist_cannot_make_ffmpeg_read_local_files(hls_dir: tuple[Path, str]) -> None:
    folder, base = hls_dir
    (folder / "evil.m3u8").write_text(_playlist(f"file://{folder / 'seg0.ts'}"))
    source = VideoSource(f"{base}/evil.m3u8", _FAST)
    delivered: list[object] = []
    with pytest.raises(SourceError):
        delivered.extend(source.frames())
    assert delivered == []


def test_local_file_with_playlist_content_is_not_followed(tmp_path: Path) -> None:
    _write_ts_segment(tmp_path / "seg0.ts")
    disguised = tmp_path / "clip.mp4"
    disguised.write_text(_playlist(f"file://{tmp_path / 'seg0.ts'}"))
    source = VideoSource(str(disguised), SourceOptions(allow_file=True))
    with pytest.raises(CorruptSourceError):
        list(source.frames())


def test_local_mpegts_file_decodes_with_the_file_whitelist(tmp_path: Path) -> None:
    _write_ts_segment(tmp_path / "seg0.ts")
    frames = list(VideoSource(str(tmp_path / "seg0.ts"), SourceOptions(allow_file=True)).frames())
    assert len(frames) >= 2


@pytest.mark.parametrize("scheme", ["rtsp", "rtsps", "http", "https"])
def test_each_network_whitelist_lets_ffmpeg_reach_the_network(scheme: str) -> None:
    # A closed port: refused means the whitelist let FFmpeg connect; a missing protocol
    # would fail earlier with "Invalid argument".
    url = check_source_url(f"{scheme}://127.0.0.1:{free_port()}/x", allow_file=False)
    options = {
        "protocol_whitelist": url.protocol_whitelist,
        "format_whitelist": url.format_whitelist,
    }
    with pytest.raises(ConnectionRefusedError):
        av.open(url.ffmpeg_url, options=options, timeout=5)
    crippled = {**options, "protocol_whitelist": "tcp" if scheme != "rtsp" else "udp"}
    with pytest.raises(av.error.ArgumentError):
        av.open(url.ffmpeg_url, options=crippled, timeout=5)


def test_log_lines_redact_urls_in_any_field(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from worker.logs import configure_logging

    configure_logging("json", "info")
    log = structlog.get_logger("test")
    log.warning("open failed rtsp://admin:pa/ss?QXQX@cam/x", error="at http://bob:QXQX@h/ x")
    try:
        raise OSError("cannot reach rtsps://u:QXQX@cam/live")
    except OSError:
        log.exception("crashed")
    err = capsys.readouterr().err
    assert "QXQX" not in err and "admin" not in err and "bob" not in err
    assert "rtsp://***" in err and "Traceback" in err


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "hostile",
    [
        "x" * 200_000,  # a long run of scheme characters with no ':'
        "token" * 40_000,  # a long run of key characters with no separator
        "a:" * 100_000,
        " = " * 100_000,
    ],
)
def test_redaction_of_huge_hostile_values_is_not_quadratic(hostile: str) -> None:
    """A DLQ value or log string of 200 kB is redacted in linear time (it once took minutes,
    stalling the assignments watcher); the secret next to it is still hidden."""
    value = json.dumps({"labels": {"big": hostile}, "url": "rtsp://u:hunter2@cam/"})
    assert b"hunter2" not in redact_record_value(value.encode())
    assert "hunter2" not in redact_record_value(f"{hostile} password=hunter2")
