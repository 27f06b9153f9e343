"""KubeClient's own HTTP/1.1 transport against a raw-socket server that plays scripted
responses byte for byte: framing (Content-Length, chunked, read-to-close), keep-alive and
its retry rule, the deadline, and malformed answers.  Real sockets on 127.0.0.1; the
server is a stand-in for the API server or a proxy in front of it."""
from __future__ import annotations

import json
import socket
import threading
import time
import shutil
import ssl
import subprocess
from typing import Dict, Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycxi.vni.kube import KubeClient, KubeConfig, KubeError

CM = "/api/v1/namespaces/ns/configmaps"


class Reply:
    """What the server sends for one request: ``pieces`` (one ``sendall`` each, ``gap``
    seconds apart), then the connection stays open unless ``close``."""

    def __init__(self, *pieces: bytes, close: bool = False, gap: float = 0.0) -> None:
        self.pieces = pieces
        self.close = close
        self.gap = gap


class Seen:
    def __init__(self, conn: int, line: str, headers: Dict[str, str], body: bytes) -> None:
        self.conn, self.line, self.headers, self.body = conn, line, headers, body


class ScriptServer:
    """Reads HTTP requests on any number of connections and answers each with the next
    scripted :class:`Reply`; with none left it closes the connection unanswered."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.replies: List[Reply] = []
        self.requests: List[Seen] = []
        self.connections = 0
        self.closed: List[int] = []        # connections the server closed
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self._socks: List[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def script(self, *replies: Reply) -> None:
        with self.cond:
            self.replies.extend(replies)

    def wait_closed(self, conn: int, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: conn in self.closed, timeout), self.closed

    def close(self) -> None:
        self.stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the accept (close alone does not)
        except OSError:
            pass
        self.sock.close()
        with self.cond:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.cond:
                self.connections += 1
                self._socks.append(c)
                n = self.connections
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c: socket.socket, n: int) -> None:
        buf = b""
        try:
            if self.tls is not None:
                c = self.tls.wrap_socket(c, server_side=True)
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                hdrs = {k.strip().lower(): v.strip()
                        for k, _, v in (ln.partition(":") for ln in lines[1:])}
                size = int(hdrs.get("content-length", "0"))
                while len(buf) < size:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                body, buf = buf[:size], buf[size:]
                with self.cond:
                    self.requests.append(Seen(n, lines[0], hdrs, body))
                    reply = self.replies.pop(0) if self.replies else None
                if reply is None:
                    return
                for i, piece in enumerate(reply.pieces):
                    if i and reply.gap and self.stop.wait(reply.gap):
                        return
                    c.sendall(piece)
                if reply.close:
                    return
        except OSError:
            return
        finally:
            c.close()
            with self.cond:
                self.closed.append(n)
                self.cond.notify_all()


@pytest.fixture
def srv() -> Iterator[ScriptServer]:
    s = ScriptServer()
    yield s
    s.close()


@pytest.fixture
def client(srv: ScriptServer) -> Iterator[KubeClient]:
    c = KubeClient(KubeConfig(f"http://127.0.0.1:{srv.port}", token="t0k"), timeout=5.0)
    yield c
    c.close()


def ok(doc: object, *, status: str = "200 OK", extra: str = "",
       version: str = "HTTP/1.1") -> bytes:
    body = json.dumps(doc).encode()
    return (f"{version} {status}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def chunked(body: bytes, sizes: List[int], *, ext: str = "", trailers: str = "") -> bytes:
    out = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"]
    pos = 0
    for n in sizes:
        part = body[pos:pos + n]
        if not part:
            break
        out.append(f"{len(part):x}{ext}\r\n".encode() + part + b"\r\n")
        pos += len(part)
    if pos < len(body):
        out.append(f"{len(body) - pos:X}\r\n".encode() + body[pos:] + b"\r\n")
    out.append(f"0{ext}\r\n{trailers}\r\n".encode())
    return b"".join(out)


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


# --- requests and keep-alive ----------------------------------------------------------------


def test_request_head_and_body_and_keep_alive(srv, client):
    srv.script(Reply(ok({"kind": "ConfigMap", "n": 1})), Reply(ok({"n": 2})))
    assert client.create(CM, {"metadata": {"name": "a"}, "data": {"k": "ü"}}) == {
        "kind": "ConfigMap", "n": 1}
    assert client.get(CM + "/a") == {"n": 2}
    post, get = srv.requests
    assert post.line == f"POST {CM}?fieldManager=pycxi-vni HTTP/1.1"
    assert post.headers["host"] == f"127.0.0.1:{srv.port}"
    assert post.headers["authorization"] == "Bearer t0k"
    assert post.headers["content-type"] == "application/json"
    assert json.loads(post.body) == {"metadata": {"name": "a"}, "data": {"k": "ü"}}
    assert get.line == f"GET {CM}/a HTTP/1.1" and get.body == b""
    assert post.conn == get.conn == 1 and srv.connections == 1


def test_one_byte_per_send(srv, client):
    doc = {"metadata": {"name": "x" * 50}, "items": list(range(20))}
    raw = ok(doc)
    srv.script(Reply(*(raw[i:i + 1] for i in range(len(raw)))),
               Reply(*(bytes([b]) for b in chunked(json.dumps(doc).encode(), [7, 1, 30]))))
    assert client.get(CM) == doc
    assert client.get(CM) == doc
    assert srv.connections == 1


def test_chunked_with_extensions_and_trailers_keeps_the_connection(srv, client):
    doc = {"kind": "List", "items": [{"n": i} for i in range(50)]}
    body = json.dumps(doc).encode()
    srv.script(Reply(chunked(body, [1, 16, 100, 3], ext=';name="v";x=1',
                             trailers="X-Checksum: 1\r\nX-Other: 2\r\n")),
               Reply(ok({"after": True})))
    assert client.get(CM) == doc
    assert client.get(CM) == {"after": True}
    assert [r.conn for r in srv.requests] == [1, 1]


def test_large_bodies_by_length_and_by_chunks(srv, client):
    doc = {"items": [{"name": f"vni-{i}", "pad": "p" * 100} for i in range(20000)]}
    body = json.dumps(doc).encode()
    assert len(body) > 2_000_000
    srv.script(Reply(ok(doc)), Reply(chunked(body, [65536] * 40)))
    assert client.get(CM) == doc
    assert client.get(CM) == doc
    assert srv.connections == 1


def test_read_to_close_body_then_a_new_connection(srv, client):
    body = json.dumps({"v": 1}).encode()
    srv.script(Reply(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", body[:3],
                     body[3:], close=True),
               Reply(ok({"v": 2})))
    assert client.get(CM) == {"v": 1}
    assert client.get(CM) == {"v": 2}
    assert [r.conn for r in srv.requests] == [1, 2]


@pytest.mark.parametrize("first", [ok({"v": 1}, extra="Connection: close\r\n"),
                                   ok({"v": 1}, extra="connection: Keep-Alive, Close\r\n"),
                                   ok({"v": 1}, version="HTTP/1.0")],
                         ids=["connection-close", "connection-list", "http-1.0"])
def test_close_after_the_response_when_told(srv, client, first):
    # the server leaves the connection open: the client must close it by itself
    srv.script(Reply(first), Reply(ok({"v": 2})))
    assert client.get(CM) == {"v": 1}
    assert client.get(CM) == {"v": 2}
    assert [r.conn for r in srv.requests] == [1, 2]
    srv.wait_closed(1)     # the client closed it, the server saw the end


def test_100_continue_and_early_hints_are_skipped(srv, client):
    srv.script(Reply(b"HTTP/1.1 100 Continue\r\n\r\n",
                     b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok({"v": 1})),
               Reply(ok({"v": 2})))
    assert client.create(CM, {"metadata": {"name": "a"}}) == {"v": 1}
    assert client.get(CM) == {"v": 2}
    assert srv.connections == 1


def test_no_body_statuses(srv, client):
    srv.script(Reply(b"HTTP/1.1 204 No Content\r\n\r\n"), Reply(ok({"v": 2})))
    assert client.delete(CM + "/a") == {}
    assert client.get(CM) == {"v": 2}
    assert srv.connections == 1


# --- the retry rule -------------------------------------------------------------------------


def test_a_kept_alive_connection_closed_between_requests_is_retried_once(srv, client):
    srv.script(Reply(ok({"v": 1}), close=True), Reply(ok({"v": 2})))
    assert client.get(CM) == {"v": 1}
    srv.wait_closed(1)
    assert client.create(CM, {"metadata": {"name": "b"}}) == {"v": 2}
    # the request on the dead connection never reached a server; the retry did, once
    assert [(r.conn, r.line.split()[0]) for r in srv.requests] == [(1, "GET"), (2, "POST")]


def test_the_retry_is_only_once(srv, client):
    srv.script(Reply(ok({"v": 1}), close=True))    # then: closed without an answer
    assert client.get(CM) == {"v": 1}
    srv.wait_closed(1)
    with pytest.raises(KubeError) as e:
        client.get(CM)
    assert e.value.reason == "ConnectionError" and e.value.status == 0
    assert [r.conn for r in srv.requests] == [1, 2]


def test_a_fresh_connection_closed_unanswered_is_not_retried(srv, client):
    with pytest.raises(KubeError) as e:
        client.get(CM)
    assert e.value.reason == "ConnectionError"
    assert len(srv.requests) == 1 and srv.connections == 1


@pytest.mark.parametrize("partial", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"v\": 1",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"H",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"v\":\r\n",
], ids=["in-body", "in-headers", "first-byte", "in-chunks"])
def test_a_server_closing_mid_response_is_not_retried(srv, client, partial):
    # a reused connection (the case that is retried when nothing came back)
    srv.script(Reply(ok({"v": 0})), Reply(partial, close=True), Reply(ok({"v": 2})))
    assert client.get(CM) == {"v": 0}
    with pytest.raises(KubeError) as e:
        client.create(CM, {"metadata": {"name": "c"}})
    assert e.value.reason == "ConnectionError" and "mid-response" in e.value.message
    assert [r.conn for r in srv.requests] == [1, 1]      # no second try
    assert client.get(CM) == {"v": 2}                   # and the next one is fresh
    assert srv.requests[-1].conn == 2


# --- malformed answers ----------------------------------------------------------------------

BAD = {
    "garbage-status-line": b"garbage\r\n\r\n",
    "status-not-a-number": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n{}",
    "status-too-long": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    "http-2": b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "oversized-header-block": (b"HTTP/1.1 200 OK\r\n"
                               + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000)
                                          for i in range(70)) + b"Content-Length: 2\r\n\r\n{}"),
    "endless-header-block": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70000,
    "too-many-header-lines": (b"HTTP/1.1 200 OK\r\n"
                              + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
                              + b"Content-Length: 2\r\n\r\n{}"),
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "0x-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
    "negative-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
    "chunk-without-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
    "endless-chunk-line": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 9000,
    "gzip-transfer-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\n{}",
    "conflicting-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(BAD.values()), ids=list(BAD))
def test_malformed_answers_are_bad_responses_and_drop_the_connection(srv, client, raw):
    # the server keeps the connection open: the client must drop it, not wait or reuse it
    srv.script(Reply(raw), Reply(ok({"v": 2})))
    t0 = time.monotonic()
    with pytest.raises(KubeError) as e:
        client.get(CM)
    assert e.value.reason == "BadResponse" and e.value.status == 0, e.value
    assert time.monotonic() - t0 < 4     # not the 5 s timeout
    assert client.get(CM) == {"v": 2}
    assert [r.conn for r in srv.requests] == [1, 2]


def test_bytes_beyond_the_framing_drop_the_connection(srv, client):
    # more than Content-Length says, or a body on a 204: whatever follows is not trusted
    srv.script(Reply(ok({"v": 1}) + b"HTTP/1.1 200 OK\r\n"),
               Reply(b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}"),
               Reply(ok({"v": 3})))
    assert client.get(CM) == {"v": 1}
    assert client.delete(CM + "/a") == {}
    assert client.get(CM) == {"v": 3}
    assert [r.conn for r in srv.requests] == [1, 2, 3]


def test_repeated_equal_content_length_is_accepted(srv, client):
    body = b'{"v": 1}'
    srv.script(Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\ncontent-length: 8\r\n\r\n" + body))
    assert client.get(CM) == {"v": 1}


def test_statuses_map_to_kube_errors(srv, client):
    status = {"kind": "Status", "reason": "NotFound", "message": "configmaps \"a\" not found"}
    srv.script(Reply(ok(status, status="404 Not Found")),
               Reply(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 11\r\n\r\n<html></ht>"),
               Reply(b"HTTP/1.1 302 Found\r\nLocation: https://login.example/\r\n"
                     b"Content-Length: 0\r\n\r\n"),
               Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n<html>hi!"),
               Reply(ok([1, 2])))
    with pytest.raises(KubeError) as e:
        client.get(CM + "/a")
    assert e.value.not_found and e.value.reason == "NotFound" and e.value.body == status
    with pytest.raises(KubeError) as e:
        client.get(CM)
    assert (e.value.status, e.value.reason) == (500, "Internal Server Error")
    assert e.value.message == "<html></ht>"
    with pytest.raises(KubeError) as e:
        client.get(CM)
    assert e.value.reason == "UnexpectedStatus" and "https://login.example/" in e.value.message
    assert "302 Found" in e.value.message
    for reason in ("not JSON", "not a JSON object"):
        with pytest.raises(KubeError) as e:
            client.get(CM)
        assert e.value.reason == "BadResponse" and reason in e.value.message
    assert srv.connections == 1


# --- the deadline ---------------------------------------------------------------------------


def test_a_trickling_server_times_out_within_the_deadline(srv):
    body = json.dumps({"pad": "x" * 400}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    # every recv sees a byte well within the timeout; the whole would take 20 s
    srv.script(Reply(head, *(body[i:i + 1] for i in range(len(body))), gap=0.05))
    c = KubeClient(KubeConfig(f"http://127.0.0.1:{srv.port}"), timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(KubeError) as e:
        c.get(CM)
    took = time.monotonic() - t0
    assert e.value.reason == "Timeout" and e.value.status == 0
    assert 0.45 <= took < 1.5, took
    srv.wait_closed(1)     # the client dropped the connection


def test_a_silent_server_times_out(srv):
    srv.script(Reply(b"HTTP/1.1 200 OK\r\n", gap=30))   # one piece: never finishes the head
    c = KubeClient(KubeConfig(f"http://127.0.0.1:{srv.port}"), timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(KubeError) as e:
        c.get(CM)
    assert e.value.reason == "Timeout" and time.monotonic() - t0 < 1.3


# --- any split, any chunking ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=5),
    max_leaves=30)


def test_any_split_and_chunking_decodes_the_same(srv, client):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(doc=st.dictionaries(st.text(max_size=8), json_values, max_size=6),
           framing=st.sampled_from(["length", "chunked", "close"]),
           sizes=st.lists(st.integers(1, 64), min_size=1, max_size=20),
           cuts=st.lists(st.integers(0, 10**6), max_size=8))
    def check(doc: dict, framing: str, sizes: List[int], cuts: List[int]) -> None:
        body = json.dumps(doc).encode()
        if framing == "length":
            raw = ok(doc)
        elif framing == "chunked":
            raw = chunked(body, sizes, ext=";e=1" if len(sizes) % 2 else "")
        else:
            raw = b"HTTP/1.1 200 OK\r\n\r\n" + body
        srv.script(Reply(*split(raw, cuts), close=framing == "close", gap=0.001))
        before = len(srv.requests)
        assert client.get(CM) == doc
        assert len(srv.requests) == before + 1

    check()


# --- TLS (certificates and their refusal: test_tls.py) ---------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_keep_alive_chunks_and_the_retry(tmp_path):
    """What a real API server does over TLS: several answers on one connection, chunked
    bodies, and an idle connection it closes (retried once on a new handshake)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=apiserver", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    srv = ScriptServer(tls=ctx)
    try:
        c = KubeClient(KubeConfig(f"https://127.0.0.1:{srv.port}", token="t",
                                  ca_file=str(tmp_path / "c.pem")), timeout=5)
        doc = {"items": [{"n": i, "pad": "x" * 50} for i in range(400)]}   # > 16 KiB records
        raw = chunked(json.dumps(doc).encode(), [5000, 1, 17000])
        srv.script(Reply(*split(raw, [3, 100, 20000])), Reply(ok({"v": 2}), close=True),
                   Reply(ok({"v": 3})))
        assert c.get(CM) == doc
        assert c.get(CM) == {"v": 2}
        srv.wait_closed(1)
        assert c.get(CM) == {"v": 3}
        assert [r.conn for r in srv.requests] == [1, 1, 2]
        assert srv.requests[0].headers["authorization"] == "Bearer t"
        c.close()
    finally:
        srv.close()


# --- the lookup's timeout is in test_lookup.py ------------------------------------------------


def test_unreachable_server_is_a_connection_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()    # nothing listens there now
    with pytest.raises(KubeError) as e:
        KubeClient(KubeConfig(f"http://127.0.0.1:{port}"), timeout=2).get(CM)
    assert e.value.reason == "ConnectionError" and e.value.status == 0


def test_urls_and_tokens_cannot_inject_header_lines(srv):
    c = KubeClient(KubeConfig(f"http://127.0.0.1:{srv.port}", token="a\r\nX-Evil: 1"))
    for bad in (lambda: KubeClient(KubeConfig(f"http://127.0.0.1:{srv.port}")).get(
                    "/api/v1/x HTTP/1.1\r\nX-Evil: 1\r\n"),
                lambda: c.get(CM)):
        with pytest.raises(KubeError):
            bad()
    assert srv.requests == []

