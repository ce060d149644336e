"""The archive's HTTP session: a kept-alive connection the archive drops under a request is retried once on a new
connection, and a timeout is reported at once (a real HTTP server on loopback, shaped to misbehave)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List

import pytest
import requests

from lib.dicom.archive import Archive, archive_session
from lib.errors import ArchiveUnavailable


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour = "drop-second"
    requests_seen: List[str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections, as Orthanc's

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server: _Server = self.server  # type: ignore[assignment]
        server.requests_seen.append(self.path)
        if server.behaviour == "drop-second" and len(server.requests_seen) == 2:
            self.close_connection = True  # closes the kept-alive connection with the request unanswered
            return
        if server.behaviour == "hang":
            time.sleep(1.5)
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.requests_seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_dropped_kept_alive_connection_is_retried_on_a_new_one(server):
    session = archive_session("", "", timeout_s=5)
    url = f"http://127.0.0.1:{server.server_address[1]}/studies"
    assert session.get(url).status_code == 200
    assert session.get(url).status_code == 200, "the request the archive dropped was sent again and answered"
    assert len(server.requests_seen) == 3


def test_without_the_retry_the_same_drop_fails(server):
    """What the retry is for: a plain session fails on the same drop (so the test above can fail)."""
    session = requests.Session()
    url = f"http://127.0.0.1:{server.server_address[1]}/studies"
    assert session.get(url, timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(url, timeout=5)


def test_a_hung_archive_is_reported_after_one_timeout_not_retried(server):
    server.behaviour = "hang"
    archive = Archive(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ArchiveUnavailable, match="did not answer in time"):
        archive.studies()
    assert time.monotonic() - started < 5, "one timeout of 0.5 s, not the default minute"
    assert len(server.requests_seen) == 1


def test_a_stopped_archive_is_reported_at_once(server):
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    started = time.monotonic()
    with pytest.raises(ArchiveUnavailable, match="does not answer"):
        Archive(f"http://127.0.0.1:{port}", timeout_s=5).studies()
    assert time.monotonic() - started < 5
