"""A tiny Kubernetes REST client: standard library only.

Used by the pod -> VNI lookup on the CNI plugin's hot path (where importing the
``kubernetes`` client alone costs ~240 ms) and by :class:`pycxi.vni.kstore.KubeStore`.
It speaks JSON over its own small HTTP/1.1 transport on ``socket`` (``ssl`` for https):
one keep-alive connection per thread, every request bounded as a whole by its timeout.
Configuration comes from a kubeconfig file (token, token file or client certificates;
``exec``/``auth-provider`` plugins are not supported) or from the in-cluster service
account.

The names of our API (group, kinds, annotations, the pod condition) live here too, so
that the lookup, the store and the controller share one spelling.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

if TYPE_CHECKING:
    import ssl

# ssl and tempfile are imported where needed: the CNI plugin imports this module on
# every pod ADD, and a plain-http or token-only setup should not pay for them.

__all__ = [
    "GROUP", "VERSION", "API_VERSION", "VNI_PLURAL", "CLAIM_PLURAL", "ANNOTATION",
    "LEGACY_ANNOTATION", "POD_CONDITION", "FIELD_MANAGER",
    "KubeError", "KubeConfigError", "KubeConfig", "KubeClient", "vni_name",
]

# --- our API ---------------------------------------------------------------------------

GROUP = "vni.pycxi.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
VNI_PLURAL = "vnis"
CLAIM_PLURAL = "vniclaims"
#: A workload asks for a VNI with this annotation: "true" (its own) or a claim name.
ANNOTATION = f"{GROUP}/vni"
#: The original OpenCUBE service's key, still honoured.
LEGACY_ANNOTATION = "vni"
#: The pod status condition the controller writes; the CNI plugin reads only this.
POD_CONDITION = f"{GROUP}/Allocated"
FIELD_MANAGER = "pycxi-vni"


def vni_name(vni: int) -> str:
    """The name of the cluster-scoped ``Vni`` object that holds ``vni``."""
    return f"vni-{vni}"


# --- errors ----------------------------------------------------------------------------


class KubeError(Exception):
    """The API server answered with an error status, or could not be reached
    (``status`` 0)."""

    def __init__(self, status: int, reason: str = "", message: str = "",
                 body: Optional[dict] = None) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}
        super().__init__(f"{status} {reason}: {message}" if status else message)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: AlreadyExists on create, Conflict on a stale resourceVersion/uid."""
        return self.status == 409


class KubeConfigError(KubeError):
    """No usable configuration (missing file, unsupported auth plugin...)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "ConfigError", message)


# --- configuration ---------------------------------------------------------------------

_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    def __init__(self, server: str, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, ca_file: Optional[str] = None,
                 ca_data: Optional[str] = None, cert_file: Optional[str] = None,
                 key_file: Optional[str] = None, insecure: bool = False,
                 namespace: str = "default") -> None:
        u = urllib.parse.urlsplit(server)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise KubeConfigError(f"invalid API server URL {server!r}")
        self.server = server.rstrip("/")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        self.token = token
        self.token_file = token_file
        self.ca_file = ca_file
        self.ca_data = ca_data
        self.cert_file = cert_file
        self.key_file = key_file
        self.insecure = insecure
        self.namespace = namespace
        self.cert_data: Optional[bytes] = None  # inline client certificate/key (kubeconfig
        self.key_data: Optional[bytes] = None   # *-data fields), for kopf's login
        self._token_cache: Tuple[float, Optional[str]] = (0.0, None)
        self._ssl: Optional["ssl.SSLContext"] = None

    # Bound service-account tokens are rotated by the kubelet; re-read the file now and then.
    _TOKEN_TTL = 60.0

    def bearer(self) -> Optional[str]:
        if self.token:
            return self.token
        if not self.token_file:
            return None
        t, tok = self._token_cache
        now = time.monotonic()
        if tok is None or now - t > self._TOKEN_TTL:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    tok = f.read().strip()
            except OSError as e:
                raise KubeConfigError(f"cannot read token file {self.token_file}: {e}") from e
            self._token_cache = (now, tok)
        return tok

    def ssl_context(self) -> "ssl.SSLContext":
        import ssl

        if self._ssl is None:
            if self.insecure:
                ctx = ssl._create_unverified_context()  # the user asked for it in kubeconfig
            else:
                ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            self._ssl = ctx
        return self._ssl

    # -- loaders --

    @classmethod
    def load(cls, kubeconfig: Optional[str] = None, *, context: Optional[str] = None) -> "KubeConfig":
        """``kubeconfig`` if given, else ``$KUBECONFIG``, else the in-cluster service
        account, else ``~/.kube/config``."""
        if kubeconfig:
            return cls.from_kubeconfig(kubeconfig, context=context)
        env = os.environ.get("KUBECONFIG")
        if env:
            # kubectl merges a list; we take the first file that exists
            for p in env.split(os.pathsep):
                if p and os.path.exists(p):
                    return cls.from_kubeconfig(p, context=context)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster()
        home = os.path.expanduser("~/.kube/config")
        if os.path.exists(home):
            return cls.from_kubeconfig(home, context=context)
        raise KubeConfigError("no kubeconfig given, $KUBECONFIG unset and not running in a pod")

    @classmethod
    def in_cluster(cls, sa_dir: str = _SA_DIR) -> "KubeConfig":
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise KubeConfigError("KUBERNETES_SERVICE_HOST is not set: not running in a pod")
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        ns = "default"
        try:
            with open(os.path.join(sa_dir, "namespace"), encoding="utf-8") as f:
                ns = f.read().strip() or ns
        except OSError:
            pass
        return cls(f"https://{host}:{port}", token_file=os.path.join(sa_dir, "token"),
                   ca_file=os.path.join(sa_dir, "ca.crt"), namespace=ns)

    @classmethod
    def from_kubeconfig(cls, path: str, *, context: Optional[str] = None) -> "KubeConfig":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {e}") from e
        doc = _parse_config_text(text, path)
        base = os.path.dirname(os.path.abspath(path))

        def named(section: str, name: str) -> dict:
            for item in doc.get(section) or ():
                if isinstance(item, dict) and item.get("name") == name:
                    return item.get(section[:-1]) or {}
            raise KubeConfigError(f"{path}: no {section[:-1]} named {name!r}")

        ctx_name = context or doc.get("current-context")
        if not ctx_name:
            raise KubeConfigError(f"{path}: no current-context")
        ctx = named("contexts", ctx_name)
        cluster = named("clusters", ctx.get("cluster", ""))
        user = named("users", ctx["user"]) if ctx.get("user") else {}
        if "exec" in user or "auth-provider" in user:
            raise KubeConfigError(
                f"{path}: user {ctx.get('user')!r} uses an exec/auth-provider plugin, which this "
                "client does not run; use a token, a token file or client certificates")

        def file_or_data(file_key: str, data_key: str, src: dict) -> Optional[str]:
            if src.get(data_key):
                return _data_file(base64.b64decode(src[data_key]))
            if src.get(file_key):
                return os.path.join(base, os.path.expanduser(src[file_key]))
            return None

        ca_data = None
        if cluster.get("certificate-authority-data"):
            ca_data = base64.b64decode(cluster["certificate-authority-data"]).decode("ascii")
        ca_file = (os.path.join(base, cluster["certificate-authority"])
                   if cluster.get("certificate-authority") else None)
        token_file = user.get("tokenFile")
        try:
            return cls._build(cluster, user, ctx, base, token_file, file_or_data, ca_file, ca_data)
        finally:
            _drop_data_files()

    @classmethod
    def _build(cls, cluster: dict, user: dict, ctx: dict, base: str, token_file: Optional[str],
               file_or_data: Any, ca_file: Optional[str], ca_data: Optional[str]) -> "KubeConfig":
        cfg = cls(cluster.get("server", ""), token=user.get("token"),
                  token_file=os.path.join(base, token_file) if token_file else None,
                  ca_file=ca_file, ca_data=ca_data,
                  cert_file=file_or_data("client-certificate", "client-certificate-data", user),
                  key_file=file_or_data("client-key", "client-key-data", user),
                  insecure=bool(cluster.get("insecure-skip-tls-verify")),
                  namespace=ctx.get("namespace") or "default")
        if user.get("client-certificate-data"):
            cfg.cert_data = base64.b64decode(user["client-certificate-data"])
        if user.get("client-key-data"):
            cfg.key_data = base64.b64decode(user["client-key-data"])
        if cfg.cert_file and cfg.scheme == "https":
            cfg.ssl_context()  # load now, so that the temporary key files can go at once
        return cfg


def _parse_config_text(text: str, path: str) -> dict:
    # JSON is valid YAML and costs nothing to parse; PyYAML (a pycxi dependency) only
    # for real YAML, so a JSON kubeconfig keeps the CNI hot path stdlib-only.
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            import yaml
        except ImportError as e:  # pragma: no cover - PyYAML is a dependency
            raise KubeConfigError(f"{path} is YAML and PyYAML is missing; use JSON") from e
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise KubeConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise KubeConfigError(f"{path}: not a kubeconfig")
    return doc


_data_files: list = []


def _data_file(data: bytes) -> str:
    # ssl.load_cert_chain wants files; write the inline cert/key privately and remove
    # them as soon as the context has loaded them.
    import tempfile

    fd, p = tempfile.mkstemp(prefix="pycxi-kube-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    _data_files.append(p)
    return p


def _drop_data_files() -> None:
    while _data_files:
        try:
            os.unlink(_data_files.pop())
        except OSError:
            pass


# --- HTTP/1.1 transport ------------------------------------------------------------------
#
# Our own, over ``socket``: http.client parses every response's headers with the email
# package and reads through a stream wrapper that bounds each read by the deadline in
# Python, ~0.3 ms of CPU per request to the controller; this takes about a third of
# that, and the CNI plugin no longer imports http.client and email on every pod ADD.
# It speaks what the API server (Go's net/http) and proxies in front of it speak:
# keep-alive, Content-Length, chunked bodies, bodies delimited by the connection's close,
# interim 1xx answers.  Headers are not parsed into a dict: the few that matter are
# looked up by name in the lower-cased header block.

_MAX_HEAD = 64 * 1024      # status line + headers of one response
_MAX_HEADERS = 100         # header lines of one response (as http.client)
_MAX_LINE = 8 * 1024       # a chunk-size line or a trailer line
_RECV = 64 * 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_BAD_URL = re.compile(r"[^\x21-\x7e]")          # no spaces, controls or non-ASCII
_BAD_VALUE = re.compile(r"[\x00-\x1f\x7f]")     # a header value cannot carry CR/LF
_NO_BODY = frozenset((204, 304))
_monotonic = time.monotonic


def _left(deadline: float) -> float:
    """Seconds left until a request's ``deadline``; ``socket.timeout`` once it has passed
    (every connect, send and receive of a request is bounded by what is left)."""
    left = deadline - _monotonic()
    if left <= 0:
        raise socket.timeout("request deadline passed")
    return left


class _BadResponse(Exception):
    """The server did not answer HTTP/1.x as we read it; the connection is dropped."""


class _Closed(ConnectionError):
    """The server closed the connection before the response was complete."""


# JSON as json.dumps(separators=(",", ":")) and json.loads would, without their per-call
# set-up (a new JSONEncoder per dumps with options, encoding detection per loads).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()
_JSON_WS = " \t\r\n"


def _dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def _loads(raw: Any) -> Any:
    try:
        text = raw.decode()             # the API server speaks UTF-8
        doc, end = _DECODER.raw_decode(text)
        if end == len(text) or not text[end:].strip(_JSON_WS):
            return doc
    except ValueError:                  # UnicodeDecodeError too
        pass
    return json.loads(raw)              # json's own verdict (BOMs, UTF-16, the error)


_QUERIES: Dict[Tuple[Tuple[str, Any], ...], str] = {}


def _query(params: Mapping[str, Any]) -> str:
    """``params`` url-encoded (None values left out); the few distinct ones are cached."""
    key = tuple(params.items())
    try:
        return _QUERIES[key]
    except (KeyError, TypeError):
        pass
    q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    # only str keys: 1 == True would otherwise share "limit=1" and "limit=True"
    if len(_QUERIES) < 256 and all(v is None or type(v) is str for _, v in key):
        _QUERIES[key] = q
    return q


def _phrase(status: int) -> str:
    import http  # only on error paths; the CNI's good path never builds the enum

    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Response:
    """Reads one response from ``sock``, every ``recv`` bounded by what is left of the
    request's deadline (a socket timeout alone bounds each ``recv``: a server trickling one
    byte a second would hold the request forever)."""

    __slots__ = ("sock", "deadline", "buf", "pos", "received", "status", "head", "low",
                 "body", "keep_alive")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf: Any = b""        # bytes while one recv holds it all, else a bytearray
        self.pos = 0
        self.received = 0          # response bytes seen: 0 means a retry is still safe
        self.body: Any = b""

    def _fill(self) -> bool:
        """Receive more; False at the end of the stream."""
        self.sock.settimeout(_left(self.deadline))
        data = self.sock.recv(_RECV)
        if not data:
            return False
        self.received += len(data)
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            self.buf = data            # the common case: no copy
        else:
            if type(buf) is bytes:
                buf = self.buf = bytearray(buf[pos:])
            elif pos:
                del buf[:pos]
            buf += data
        self.pos = 0
        return True

    def _more(self) -> None:
        if not self._fill():
            raise _Closed("the server closed the connection "
                          + ("mid-response" if self.received else "without answering"))

    def _line(self) -> bytes:
        """A CRLF-terminated line (without its CRLF) of at most ``_MAX_LINE`` bytes."""
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                if len(line) > _MAX_LINE:
                    break
                return line
            if len(self.buf) - self.pos > _MAX_LINE:
                break
            self._more()
        raise _BadResponse(f"line over {_MAX_LINE} bytes in a chunked body")

    def header(self, name: str) -> Optional[str]:
        """The value of header ``name`` (lower case), repeated fields joined by ", "."""
        key = "\r\n" + name + ":"
        low = self.low
        i = low.find(key)
        if i < 0:
            return None
        vals = []
        while i >= 0:
            i += len(key)
            j = low.find("\r\n", i)
            vals.append(self.head[i:j].strip(" \t"))
            i = low.find(key, j)
        return ", ".join(vals)

    def read(self, method: str) -> None:
        self._more()
        if self._whole():
            return
        while True:
            self._head()
            if self.status >= 200:
                break
            if self.status == 101:
                raise _BadResponse("unexpected 101 Switching Protocols")
            # 1xx (100 Continue, 103 Early Hints...): informational, the answer follows
        low = self.low
        if method == "HEAD" or self.status in _NO_BODY:
            pass
        elif "\r\ntransfer-encoding:" in low:
            te = self.header("transfer-encoding") or ""
            if te.lower() != "chunked":
                # we send no TE header, so nothing but plain chunked is allowed
                raise _BadResponse(f"unsupported Transfer-Encoding {te[:40]!r}")
            self._chunked()
        else:
            i = low.find("\r\ncontent-length:")
            if i < 0:
                self._to_close()
            else:
                j = low.find("\r\n", i + 17)
                if low.find("\r\ncontent-length:", j) < 0:
                    self._sized(low[i + 17:j].strip(" \t"))
                else:
                    self._sized(self.header("content-length") or "")
        if self.pos != len(self.buf):   # bytes after the response: the framing is off
            self.keep_alive = False

    def _whole(self) -> bool:
        """The common case in one go: a 2xx that came whole in the first recv, framed by
        a single Content-Length, nothing else about the connection said.  Anything else
        (False) goes the general way, which reads the same bytes again."""
        data = self.buf
        end = data.find(b"\r\n\r\n")
        if end < 0 or not data.startswith(b"HTTP/1.1 2"):
            return False
        head = data[9:end + 2].decode("latin-1")
        low = head.lower()
        i = low.find("\r\ncontent-length:") + 17
        if i < 17 or low.find("\r\ncontent-length:", i) >= 0 \
                or "\r\ntransfer-encoding:" in low or "\r\nconnection:" in low:
            return False
        value = low[i:low.find("\r\n", i)].strip(" \t")
        code = head[:4]
        if not (value.isdigit() and value.isascii() and code[:3].isdigit() and code.isascii()) \
                or code[3] not in " \r" or code[:3] == "204" or len(data) != end + 4 + int(value) \
                or low.count("\r\n") > _MAX_HEADERS + 1:
            return False
        self.status = int(code[:3])
        self.body = data[end + 4:]
        self.pos = len(data)
        self.keep_alive = True
        return True

    def _head(self) -> None:
        end = self.buf.find(b"\r\n\r\n", self.pos)
        while end < 0:
            seen = len(self.buf) - self.pos
            if seen > _MAX_HEAD:
                break
            self._more()
            end = self.buf.find(b"\r\n\r\n", self.pos + max(seen - 3, 0))
        buf, start = self.buf, self.pos
        if end < 0 or end - start > _MAX_HEAD:
            raise _BadResponse(f"response header block over {_MAX_HEAD // 1024} KiB")
        # the header block as one string with a CRLF before each field and after the
        # last: fields are looked up by name when needed, not all parsed into a dict
        head = buf[start:end + 2].decode("latin-1")
        self.pos = end + 4
        i = head.find("\r\n")
        status_line = head[:i]
        head = head[i:]
        if head.count("\r\n") > _MAX_HEADERS + 1:
            raise _BadResponse(f"more than {_MAX_HEADERS} response header lines")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isascii() and code.isdigit()) \
                or code[0] == "0" or rest[3:4] not in ("", " "):
            raise _BadResponse(f"malformed status line {status_line[:80]!r}")
        self.status = int(code)
        self.head = head
        self.low = low = head.lower()
        self.keep_alive = version == "HTTP/1.1" and not (
            "\r\nconnection:" in low and "close" in (self.header("connection") or "").lower())

    def _sized(self, value: str) -> None:
        if not (value.isdigit() and value.isascii()):
            # "n, n" (a repeated field) is the same length; anything else is not
            vals = {v.strip() for v in value.split(",")}
            v = vals.pop()
            if vals or not (v.isascii() and v.isdigit()):
                raise _BadResponse(f"malformed Content-Length {value[:40]!r}")
            value = v
        n = int(value)
        buf, pos = self.buf, self.pos
        if len(buf) - pos >= n:      # the common case: it all came with the headers
            self.body = buf[pos:pos + n]
            self.pos = pos + n
            return
        body = bytearray(n)
        got = len(buf) - pos
        body[:got] = buf[pos:]
        self.buf, self.pos = b"", 0
        view = memoryview(body)
        sock = self.sock
        while got < n:
            sock.settimeout(_left(self.deadline))
            k = sock.recv_into(view[got:])
            if not k:
                raise _Closed(f"the server closed the connection mid-response ({got} of {n} "
                              "body bytes)")
            got += k
            self.received += k
        self.body = body

    def _chunked(self) -> None:
        out = bytearray()
        while True:
            line = self._line()
            size = line.split(b";", 1)[0].strip(b" \t")   # chunk extensions are ignored
            if not _HEX.fullmatch(size):
                raise _BadResponse(f"malformed chunk size {line[:40]!r}")
            n = int(size, 16)
            if n == 0:
                break
            while len(self.buf) - self.pos < n + 2:
                self._more()
            pos = self.pos
            if self.buf[pos + n:pos + n + 2] != b"\r\n":
                raise _BadResponse("chunk not followed by CRLF")
            out += self.buf[pos:pos + n]
            self.pos = pos + n + 2
        for _ in range(_MAX_HEADERS + 1):   # trailer fields, up to the empty line
            if not self._line():
                self.body = out
                return
        raise _BadResponse(f"more than {_MAX_HEADERS} trailer lines")

    def _to_close(self) -> None:
        # neither length nor chunking: the body ends with the connection
        self.keep_alive = False
        while self._fill():
            pass
        self.body = bytes(self.buf[self.pos:])
        self.pos = len(self.buf)


# --- client ------------------------------------------------------------------------------


class KubeClient:
    """JSON over HTTP(S) to one API server; thread-safe (a connection per thread).

    ``timeout`` bounds each request as a whole (connect + send + receive)."""

    def __init__(self, config: KubeConfig, *, timeout: float = 10.0,
                 user_agent: str = "pycxi-vni") -> None:
        self.config = config
        self.timeout = timeout
        self.user_agent = user_agent
        self._local = threading.local()
        host = f"[{config.host}]" if ":" in config.host else config.host
        if config.port != (443 if config.scheme == "https" else 80):
            host += f":{config.port}"
        # the headers every request carries, encoded into each request's head
        self._fixed = (f"Host: {host}\r\nUser-Agent: {user_agent}\r\n"
                       "Accept: application/json\r\nAccept-Encoding: identity\r\n")
        if _BAD_VALUE.search(user_agent):
            raise ValueError(f"control character in user agent {user_agent!r}")

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Optional[str] = None, **kw: Any) -> "KubeClient":
        return cls(KubeConfig.load(kubeconfig), **kw)

    def close(self) -> None:
        """Close this thread's connection (the next request opens a new one)."""
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            self._local.sock = None
            sock.close()

    def _connect(self, deadline: float) -> socket.socket:
        c = self.config
        sock = socket.create_connection((c.host, c.port), timeout=_left(deadline))
        try:
            # small request/response pairs: do not let Nagle wait for ACKs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if c.scheme == "https":
                sock.settimeout(_left(deadline))
                sock = c.ssl_context().wrap_socket(sock, server_hostname=c.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, method: str, path: str, body: Any = None, *,
                params: Optional[Mapping[str, Any]] = None,
                content_type: str = "application/json",
                timeout: Optional[float] = None) -> dict:
        """One API call; returns the decoded JSON body.  Raises :class:`KubeError`."""
        timeout = self.timeout if timeout is None else timeout
        deadline = _monotonic() + timeout
        url = self.config.prefix + path
        if params:
            url += "?" + _query(params)
        if _BAD_URL.search(url):
            raise KubeError(0, "ConnectionError", f"{method} {path}: invalid URL {url!r}")
        head = f"{method} {url} HTTP/1.1\r\n{self._fixed}"
        data = b""
        if body is not None:
            data = _dumps(body)
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
        elif method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: 0\r\n"
        tok = self.config.bearer()
        if tok:
            if _BAD_VALUE.search(tok):
                raise KubeError(0, "ConnectionError", f"{method} {path}: control character "
                                "in the bearer token")
            head += f"Authorization: Bearer {tok}\r\n"
        try:
            req = (head + "\r\n").encode("latin-1")
        except UnicodeEncodeError as e:
            raise KubeError(0, "ConnectionError", f"{method} {path}: {e}") from None
        if len(data) <= _RECV:
            req, data = req + data, b""
        local = self._local
        for attempt in (0, 1):
            sock = getattr(local, "sock", None)
            reused = sock is not None
            resp = None
            try:
                if sock is None:
                    sock = local.sock = self._connect(deadline)
                sock.settimeout(_left(deadline))   # sendall: a total, not a per-send, timeout
                sock.sendall(req)
                if data:                # a large body, not copied into the head
                    sock.settimeout(_left(deadline))
                    sock.sendall(data)
                resp = _Response(sock, deadline)
                resp.read(method)
                if not resp.keep_alive:
                    self.close()
                break
            except (socket.timeout, TimeoutError) as e:
                self.close()
                raise KubeError(0, "Timeout", f"{method} {path}: timed out after {timeout} s") from e
            except _BadResponse as e:
                self.close()
                raise KubeError(0, "BadResponse", f"{method} {path}: {e}") from None
            except OSError as e:   # ssl.SSLError is an OSError
                self.close()
                # A kept-alive connection the server already closed: retry once on a fresh
                # one, but never once any of the response came.  (A create that did reach
                # the server then answers 409, which callers treat as "maybe mine" anyway.)
                if attempt == 0 and reused and (resp is None or resp.received == 0):
                    continue
                raise KubeError(0, "ConnectionError", f"{method} {path}: {e}") from e
        assert resp is not None   # the loop either answered or raised
        status, raw = resp.status, resp.body
        try:
            doc = _loads(raw) if raw else {}
        except ValueError:
            if status < 400:    # a 200 with an HTML page (a proxy's login form) is no answer
                raise KubeError(status, "BadResponse", f"{method} {path}: not JSON: "
                                f"{bytes(raw[:120]).decode('utf-8', 'replace')!r}") from None
            doc = {"message": bytes(raw[:200]).decode("utf-8", "replace")}
        if not 200 <= status < 300 and status < 400:
            # redirects are not followed: the API server never sends one, a proxy might
            where = resp.header("location") or ""
            raise KubeError(status, "UnexpectedStatus",
                            f"{method} {path}: HTTP {status} {_phrase(status)}"
                            + (f" to {where}" if where else ""))
        if status >= 400:
            if not isinstance(doc, dict):
                doc = {}
            raise KubeError(status, str(doc.get("reason") or _phrase(status)),
                            str(doc.get("message") or ""), doc)
        if not isinstance(doc, dict):
            raise KubeError(status, "BadResponse", f"{method} {path}: not a JSON object")
        return doc

    # -- conveniences --

    @staticmethod
    def path(group: str, version: str, plural: str, namespace: Optional[str] = None,
             name: Optional[str] = None, subresource: Optional[str] = None) -> str:
        p = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if namespace:
            p += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        p += f"/{plural}"
        if name:
            p += f"/{urllib.parse.quote(name, safe='')}"
        if subresource:
            p += f"/{subresource}"
        return p

    def get(self, path: str, **kw: Any) -> dict:
        return self.request("GET", path, **kw)

    def list(self, path: str, *, label_selector: Optional[str] = None, **kw: Any) -> list:
        doc = self.request("GET", path, params={"labelSelector": label_selector}, **kw)
        return list(doc.get("items") or [])

    def create(self, path: str, body: dict, **kw: Any) -> dict:
        return self.request("POST", path, body,
                            params={"fieldManager": FIELD_MANAGER}, **kw)

    def patch(self, path: str, body: dict, *, strategic: bool = False, **kw: Any) -> dict:
        ctype = ("application/strategic-merge-patch+json" if strategic
                 else "application/merge-patch+json")
        return self.request("PATCH", path, body, content_type=ctype,
                            params={"fieldManager": FIELD_MANAGER}, **kw)

    def delete(self, path: str, *, uid: Optional[str] = None,
               resource_version: Optional[str] = None, **kw: Any) -> dict:
        """Delete; with ``uid``/``resource_version`` preconditions the server refuses
        (409) to delete anything but that very object version."""
        body: Optional[Dict[str, Any]] = None
        if uid or resource_version:
            pre: Dict[str, str] = {}
            if uid:
                pre["uid"] = uid
            if resource_version:
                pre["resourceVersion"] = resource_version
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": pre}
        return self.request("DELETE", path, body, **kw)
