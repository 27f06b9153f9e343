"""A tiny Kubernetes REST client: standard library only.

Used by the pod -> VNI lookup on the CNI plugin's hot path (where importing the
``kubernetes`` client alone costs ~240 ms) and by :class:`pycxi.vni.kstore.KubeStore`.
It speaks JSON over ``http.client``, one keep-alive connection per thread, with
bounded timeouts.  Configuration comes from a kubeconfig file (token, token file or
client certificates; ``exec``/``auth-provider`` plugins are not supported) or from the
in-cluster service account.

The names of our API (group, kinds, annotations, the pod condition) live here too, so
that the lookup, the store and the controller share one spelling.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
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


# --- client ------------------------------------------------------------------------------


class _DeadlineRaw(io.RawIOBase):
    """The response stream of one request, every ``recv`` bounded by what is left of the
    request's deadline (a socket timeout alone bounds each ``recv``: a server trickling one
    byte a second would hold the request forever)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("request deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(b)


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, deadline: float, **kw: Any) -> None:
        super().__init__(sock, **kw)
        # keep the socket's own file until the response is closed: its reference keeps the
        # socket open after the connection hands it over (a "Connection: close" answer)
        self._sockfile = self.fp
        self.fp = io.BufferedReader(_DeadlineRaw(sock, deadline))

    def _close_conn(self) -> None:
        super()._close_conn()  # type: ignore[misc]
        f, self._sockfile = self._sockfile, None
        if f is not None:
            f.close()


class KubeClient:
    """JSON over HTTP(S) to one API server; thread-safe (a connection per thread).

    ``timeout`` bounds each request as a whole (connect + send + receive)."""

    def __init__(self, config: KubeConfig, *, timeout: float = 10.0,
                 user_agent: str = "pycxi-vni") -> None:
        self.config = config
        self.timeout = timeout
        self.user_agent = user_agent
        self._local = threading.local()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Optional[str] = None, **kw: Any) -> "KubeClient":
        return cls(KubeConfig.load(kubeconfig), **kw)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            c = self.config
            if c.scheme == "https":
                conn = http.client.HTTPSConnection(c.host, c.port, timeout=timeout,
                                                   context=c.ssl_context())
            else:
                conn = http.client.HTTPConnection(c.host, c.port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(self, method: str, path: str, body: Any = None, *,
                params: Optional[Mapping[str, Any]] = None,
                content_type: str = "application/json",
                timeout: Optional[float] = None) -> dict:
        """One API call; returns the decoded JSON body.  Raises :class:`KubeError`."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        url = self.config.prefix + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        tok = self.config.bearer()
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        for attempt in (0, 1):
            reused = getattr(self._local, "conn", None) is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KubeError(0, "Timeout", f"{method} {path}: timed out after {timeout} s")
            conn = self._connection(remaining)
            try:
                if conn.sock is None:
                    conn.connect()
                    # small request/response pairs: do not let Nagle wait for ACKs
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request(method, url, body=data, headers=headers)
                # the whole response within the deadline, however the server paces it
                conn.response_class = (  # type: ignore[assignment]
                    lambda sock, _d=deadline, **kw: _DeadlineResponse(sock, _d, **kw))
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.will_close:
                    self.close()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady) as e:
                self.close()
                # A kept-alive connection the server already closed: retry once on a fresh one.
                # (A create that did reach the server then answers 409, which callers treat as
                # "maybe mine" anyway.)
                if attempt == 0 and reused:
                    continue
                raise KubeError(0, "ConnectionError", f"{method} {path}: {e}") from e
            except (socket.timeout, TimeoutError) as e:
                self.close()
                raise KubeError(0, "Timeout", f"{method} {path}: timed out after {timeout} s") from e
            except (OSError, http.client.HTTPException) as e:  # ssl.SSLError is an OSError
                self.close()
                raise KubeError(0, "ConnectionError", f"{method} {path}: {e}") from e
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            if status < 400:    # a 200 with an HTML page (a proxy's login form) is no answer
                raise KubeError(status, "BadResponse", f"{method} {path}: not JSON: "
                                f"{raw[:120].decode('utf-8', 'replace')!r}") from None
            doc = {"message": raw[:200].decode("utf-8", "replace")}
        if not 200 <= status < 300 and status < 400:
            # redirects are not followed: the API server never sends one, a proxy might
            where = resp.getheader("Location") or ""
            raise KubeError(status, "UnexpectedStatus",
                            f"{method} {path}: HTTP {status} {http.client.responses.get(status, '')}"
                            + (f" to {where}" if where else ""))
        if status >= 400:
            if not isinstance(doc, dict):
                doc = {}
            raise KubeError(status, str(doc.get("reason") or http.client.responses.get(status, "")),
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
