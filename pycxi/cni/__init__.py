"""The ``cxi`` CNI plugin: a per-pod CXI service bound to the pod's network namespace.

Layout (each module imports only the standard library and pycxi):

* :mod:`pycxi.cni.errors`   the CNI error codes and :class:`CniError`
* :mod:`pycxi.cni.skel`     the dispatcher (env table, version checks, error JSON)
* :mod:`pycxi.cni.config`   stdin bytes -> :class:`NetConf` (pure)
* :mod:`pycxi.cni.layout`   the on-disk names and paths of the state, and the DEL fast path's
  check (imports only ``posix``)
* :mod:`pycxi.cni.state`    per-attachment records, atomic writes under a flock
* :mod:`pycxi.cni.vni`      VNI sources in their precedence (static, local, Kubernetes)
* :mod:`pycxi.cni.policy`   the node policy: what a network configuration may ask for
* :mod:`pycxi.cni.nic`      the few device operations the plugin needs, over pycxi
* :mod:`pycxi.cni.commands` ADD, DEL, CHECK, GC, STATUS
* :mod:`pycxi.cni.plugin`   ``main()``, the ``cxi`` executable
* :mod:`pycxi.cni.install`  writes a fast launcher into the runtime's CNI bin dir, prints/patches
  a conflist
* :mod:`pycxi.cni.node`     the node component (``pycxi node sweep``): releases what runtimes leak,
  serves Prometheus metrics; not on the plugin's path

Nothing is imported here, so ``import pycxi.cni.plugin`` stays cheap.
"""
