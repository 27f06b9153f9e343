"""A conflist driver that follows libcni's rules (``libcni/api.go``): tests, the demo, users.

* each plugin's request is its entry plus the list's ``cniVersion`` and ``name`` (plus
  ``prevResult``, ``runtimeConfig`` and, for GC, ``cni.dev/valid-attachments``);
* ADD runs the chain in order, each result becoming the next ``prevResult``; the final result is
  cached (per network, container ID and ifname);
* CHECK runs in order and DEL in reverse, both with the cached result as ``prevResult``
  (DEL without a cache entry passes none); DEL removes the cache entry; ``disableCheck`` skips
  CHECK;
* GC (list version >= 1.1.0): DEL every cached attachment not in the valid list, then send GC
  with ``cni.dev/valid-attachments`` to every plugin (unless ``disableGC``); STATUS to every
  plugin (>= 1.1.0);
* a plugin is found by ``type`` in ``CNI_PATH``; its environment is ``CNI_COMMAND``,
  ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH`` (GC and
  STATUS: only ``CNI_COMMAND`` and ``CNI_PATH``);
* a non-zero exit stops the chain; the error JSON is read from stdout (stderr as a fallback).

Usage: ``python -m pycxi.cni.cnitool add|check|del|gc|status CONFLIST [NETNS] [IFNAME] [CID]``.
"""
import json
import os
import subprocess
import sys


class PluginError(Exception):
    def __init__(self, plugin, command, code, msg, details="", raw=""):
        super().__init__(f"plugin {plugin} {command}: [{code}] {msg}: {details}")
        self.plugin, self.command, self.code, self.msg, self.details, self.raw = (
            plugin, command, code, msg, details, raw)


def _vt(v):
    try:
        return tuple(int(x) for x in v.split("."))
    except (AttributeError, ValueError):
        return (0, 1, 0)


class CniTool:
    def __init__(self, cni_path, cache_dir, exec_prefix=(), extra_env=None, timeout=60):
        self.cni_path = list(cni_path)
        self.cache_dir = cache_dir
        self.exec_prefix = list(exec_prefix)
        self.extra_env = dict(extra_env or {})
        self.timeout = timeout

    # -- plumbing
    def find(self, typ):
        for d in self.cni_path:
            p = os.path.join(d, typ)
            if os.access(p, os.X_OK):
                return p
        raise PluginError(typ, "find", 999, f"failed to find plugin {typ!r} in path {self.cni_path}")

    def exec_plugin(self, plugin, command, conf, container_id="", netns="", ifname="", args=""):
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env.update(self.extra_env)
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = ":".join(self.cni_path)
        if command not in ("GC", "STATUS", "VERSION"):
            env.update(CNI_CONTAINERID=container_id, CNI_IFNAME=ifname, CNI_ARGS=args)
            if netns:
                env["CNI_NETNS"] = netns
        path = self.find(plugin["type"])
        p = subprocess.run(self.exec_prefix + [path], input=json.dumps(conf).encode(), env=env,
                           capture_output=True, timeout=self.timeout)
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode != 0:
            text = out.strip() or p.stderr.decode("utf-8", "replace").strip()
            try:
                e = json.loads(text)
                raise PluginError(plugin["type"], command, e.get("code"), e.get("msg"),
                                  e.get("details", ""), text)
            except (ValueError, AttributeError):
                raise PluginError(plugin["type"], command, 999, f"exit {p.returncode}", text, text)
        if command in ("ADD", "VERSION"):
            return json.loads(out) if out.strip() else None
        return None

    def _plugin_conf(self, conflist, plugin, prev=None, extra=None):
        conf = dict(plugin)
        conf["cniVersion"] = conflist["cniVersion"]
        conf["name"] = conflist["name"]
        if prev is not None:
            conf["prevResult"] = prev
        if extra:
            conf.update(extra)
        return conf

    def _cache_path(self, name, cid, ifname):
        return os.path.join(self.cache_dir, "results", f"{name}-{cid}-{ifname}")

    def cached(self, name, cid, ifname):
        try:
            with open(self._cache_path(name, cid, ifname)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    # -- libcni verbs
    def add(self, conflist, netns, ifname, cid, args=""):
        prev = None
        for plugin in conflist["plugins"]:
            prev = self.exec_plugin(plugin, "ADD", self._plugin_conf(conflist, plugin, prev),
                                    cid, netns, ifname, args)
        os.makedirs(os.path.join(self.cache_dir, "results"), exist_ok=True)
        with open(self._cache_path(conflist["name"], cid, ifname), "w") as f:
            json.dump({"kind": "cniCacheV1", "containerId": cid, "ifName": ifname,
                       "networkName": conflist["name"], "netns": netns, "args": args,
                       "result": prev}, f)
        return prev

    def check(self, conflist, netns, ifname, cid, args=""):
        if _vt(conflist["cniVersion"]) < (0, 4, 0):
            raise PluginError("libcni", "CHECK", 1, "configuration version does not support CHECK")
        if conflist.get("disableCheck"):
            return
        c = self.cached(conflist["name"], cid, ifname)
        if c is None:
            raise PluginError("libcni", "CHECK", 999, "no cached result")
        for plugin in conflist["plugins"]:
            self.exec_plugin(plugin, "CHECK", self._plugin_conf(conflist, plugin, c["result"]),
                             cid, netns, ifname, args)

    def delete(self, conflist, netns, ifname, cid, args=""):
        c = self.cached(conflist["name"], cid, ifname)
        prev = c["result"] if c else None
        for plugin in reversed(conflist["plugins"]):
            self.exec_plugin(plugin, "DEL", self._plugin_conf(conflist, plugin, prev),
                             cid, netns, ifname, args)
        try:
            os.unlink(self._cache_path(conflist["name"], cid, ifname))
        except FileNotFoundError:
            pass

    def gc(self, conflist, valid):
        """``valid``: iterable of (containerID, ifname)."""
        valid = [{"containerID": c, "ifname": i} for c, i in valid]
        keep = {(v["containerID"], v["ifname"]) for v in valid}
        errors = []
        d = os.path.join(self.cache_dir, "results")
        prefix = conflist["name"] + "-"
        for n in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            if not n.startswith(prefix):
                continue
            with open(os.path.join(d, n)) as f:
                c = json.load(f)
            if (c["containerId"], c["ifName"]) not in keep:
                try:
                    self.delete(conflist, "", c["ifName"], c["containerId"], c.get("args", ""))
                except PluginError as exc:
                    errors.append(exc)
        if _vt(conflist["cniVersion"]) >= (1, 1, 0) and not conflist.get("disableGC"):
            for plugin in conflist["plugins"]:
                try:
                    self.exec_plugin(plugin, "GC", self._plugin_conf(
                        conflist, plugin, extra={"cni.dev/valid-attachments": valid}))
                except PluginError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def status(self, conflist):
        if _vt(conflist["cniVersion"]) < (1, 1, 0):
            return
        for plugin in conflist["plugins"]:
            self.exec_plugin(plugin, "STATUS", self._plugin_conf(conflist, plugin))


def main(argv):
    verb, path = argv[0], argv[1]
    with open(path) as f:
        conflist = json.load(f)
    tool = CniTool(os.environ.get("CNI_PATH", "/opt/cni/bin").split(":"),
                   os.environ.get("CNI_CACHEDIR", "/var/lib/cni"))
    netns, ifname, cid = (argv[2:] + ["", "eth0", "cnitool-0"])[:3] if verb not in ("gc", "status") else ("", "", "")
    if verb == "add":
        print(json.dumps(tool.add(conflist, netns, ifname, cid), indent=2))
    elif verb == "check":
        tool.check(conflist, netns, ifname, cid)
    elif verb == "del":
        tool.delete(conflist, netns, ifname, cid)
    elif verb == "gc":
        tool.gc(conflist, [])
    elif verb == "status":
        tool.status(conflist)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
