"""What runs inside a task process on a node: load the function, run it, answer.

A task process is forked from the warm worker (:mod:`.worker`) and runs one
task at a time for as long as the worker lives. It finds the caller's
project (shipped by content hash) on ``sys.path``, loads the function,
decodes the arguments, runs it and encodes the value. Shipped with the
worker; stdlib only at module level.
"""
import hashlib
import os
import sys
import traceback
import types

from . import protocol as P
from .wire import WireError, decode, encode, read_frame, write_frame

NODE_DIR = os.path.join("~", P.NODE_DIR)
_CODE = {}  # type: dict  # sha256 of a shipped module's source -> its code object
SOURCES = {}  # type: dict  # sha256 -> a shipped function's bytes (module source or pickle)


def node_path(*parts):
    """A path under the node's cloudcompute directory (in the login user's home)."""
    return os.path.join(os.path.expanduser(NODE_DIR), *parts)


def remember_module(req, blobs):
    """In the worker: keep a shipped function's bytes (and compile a module once);
    later tasks name it by hash, and task processes forked from then on have it."""
    spec = req.get("fn") or {}
    sha = spec.get("sha256")
    if sha is None or "blob" not in spec or sha in SOURCES \
            or str(spec["blob"]) in req.get("staged", {}):  # a file only the task reads
        return
    SOURCES[sha] = bytes(blobs[spec["blob"]])
    if spec.get("kind") == "ref":
        try:
            _CODE[sha] = compile(SOURCES[sha], spec.get("filename", spec["module"]), "exec")
        except (SyntaxError, ValueError):
            pass  # the task's own process reports it


def with_function(req, blobs, known):
    """``req`` and ``blobs`` for a task process that holds the function hashes in
    ``known``: the worker attaches the bytes of one it lacks (sent to this worker
    once, for another task process)."""
    spec = req.get("fn") or {}
    sha = spec.get("sha256")
    if sha is None or "blob" in spec or sha in known or sha not in SOURCES:
        return req, blobs
    blobs = list(blobs)
    blobs.append(SOURCES[sha])
    return dict(req, fn=dict(spec, blob=len(blobs) - 1)), blobs


def _function_bytes(spec, blobs, what):
    if "blob" in spec:
        SOURCES[spec["sha256"]] = blobs[spec["blob"]]
        return SOURCES[spec["sha256"]]
    if spec["sha256"] not in SOURCES:
        raise WireError("%s (%s) was never sent to this worker" % (what, spec["sha256"][:12]))
    return SOURCES[spec["sha256"]]


def _load_function(spec, blobs):
    if spec["kind"] == "ref":
        mod = types.ModuleType(spec["module"])
        mod.__file__ = spec.get("filename", "<cloudcompute:%s>" % spec["module"])
        mod.__package__ = spec.get("package", "")
        sys.modules[spec["module"]] = mod
        code = _CODE.get(spec["sha256"])
        if code is None:
            source = _function_bytes(spec, blobs, "module %s" % spec["module"])
            code = _CODE[spec["sha256"]] = compile(source, mod.__file__, "exec")
        exec(code, mod.__dict__)
        obj = mod
        for part in spec["qualname"].split("."):
            obj = getattr(obj, part)
        return obj
    if spec["kind"] == "pickle":  # unpickled for each task: no state carries over
        import pickle
        if "sha256" not in spec:
            return pickle.loads(blobs[spec["blob"]])
        return pickle.loads(_function_bytes(spec, blobs, "pickled function"))
    raise WireError("unknown function kind %r" % spec["kind"])


class _ProjectPath:
    """The shipped project this process imports from; switching projects forgets
    the modules imported from the previous one."""

    current = None

    @classmethod
    def use(cls, digest):
        root = node_path("projects", digest) if digest else None
        if root == cls.current:
            return
        if cls.current is not None:
            old = cls.current + os.sep
            if cls.current in sys.path:
                sys.path.remove(cls.current)
            for name, mod in list(sys.modules.items()):
                if (getattr(mod, "__file__", None) or "").startswith(old):
                    del sys.modules[name]
        if root is not None:
            if not os.path.isfile(os.path.join(root, ".complete")):
                raise WireError("project %s is not on this node" % digest[:12])
            sys.path.insert(0, root)
            import importlib
            importlib.invalidate_caches()
        cls.current = root


def _peak_rss_kb(reset=False):
    """This process's peak RSS (VmHWM); ``reset`` starts a new peak (Linux)."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_one(req, blobs):
    """Run one task here; return its result frame's parts."""
    allow = req.get("allow_pickle", False)
    try:
        unstage(req, blobs)
        _ProjectPath.use(req.get("project"))
        fn = _load_function(req["fn"], blobs)
        args = [decode(d, blobs[d["blob"]], allow) for d in req["args"]]
        kwargs = {k: decode(d, blobs[d["blob"]], allow) for k, d in req["kwargs"].items()}
        value = fn(*args, **kwargs)
        desc, blob = encode(value, req["result_formats"], allow)
        header = {"op": P.RESULT, "ok": True, "result": dict(desc, blob=0)}
        staged = stage_blob(req, blob)
        if staged:
            header["staged"], blob = staged, b""
        return header, [blob]
    except BaseException as exc:  # report every failure, SystemExit included
        return {"op": P.RESULT, "ok": False, "exc_type": type(exc).__name__,
                "message": str(exc), "traceback": traceback.format_exc()}, []


def task_loop(req_in, res_out):
    """The task process: one task at a time, for the life of the worker."""
    inp = os.fdopen(req_in, "rb")
    out = os.fdopen(res_out, "wb")
    while True:
        try:
            req, blobs = read_frame(inp, verify=False)
        except EOFError:
            return
        _peak_rss_kb(reset=True)
        header, rblobs = run_one(req, blobs)
        sys.stdout.flush()
        sys.stderr.flush()
        header["peak_rss_kb"] = _peak_rss_kb()
        write_frame(out, header, rblobs, digests=False)


class ClientOnlyFinder:
    """Shipped modules may ``import cloudcompute`` at top level (the script that
    drives the cluster usually does); on the node that import yields inert stubs,
    so driving code that runs at import does nothing there."""

    prefix = "cloudcompute"

    def find_spec(self, name, path=None, target=None):
        if name != self.prefix and not name.startswith(self.prefix + "."):
            return None
        import importlib.machinery
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        pass


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub("%s.%s" % (self.__name__, name))


class _Stub:
    """An inert stand-in: the driving code of a module runs on the node as a no-op."""

    def __init__(self, name):
        self._name = name

    def __call__(self, *a, **k):
        return _Stub(self._name + "()")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub("%s.%s" % (self._name, name))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return iter(())

    def __repr__(self):
        return "<client-side %s>" % self._name


def unstage(req, blobs):
    """Large blobs may arrive as files, sent by the client's bulk transfer, whose
    node side already checked them against the client's sha256 as it wrote."""
    for idx, st in req.get("staged", {}).items():
        try:
            with open(st["path"], "rb") as f:
                data = bytearray(os.fstat(f.fileno()).st_size)
                got = f.readinto(data)
            os.unlink(st["path"])
        except OSError as exc:
            raise WireError("staged blob %s: %s" % (st["path"], exc)) from exc
        if got != st["size"]:
            raise WireError("staged blob %s: %d bytes, expected %d"
                            % (st["path"], got, st["size"]))
        blobs[int(idx)] = data


def staged_missing(req):
    """Why a staged argument cannot be used (checked before the task starts)."""
    for st in req.get("staged", {}).values():
        try:
            size = os.stat(st["path"]).st_size
        except OSError as exc:
            return "staged blob %s: %s" % (st["path"], exc.strerror)
        if size != st["size"]:
            return "staged blob %s: %d bytes, expected %d" % (st["path"], size, st["size"])
    return None


def stage_blob(req, blob):
    """In the task's process: leave a large result in a file for the client's bulk
    transfer (which checks it against this sha256); None if it is small."""
    limit = req.get("stage_over")
    if not limit or len(blob) <= limit:
        return None
    digest = hashlib.sha256(blob).hexdigest()
    path = os.path.join(req["stage_dir"], "result-%d-%s" % (os.getpid(), digest[:16]))
    os.makedirs(req["stage_dir"], exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
    return {"0": {"path": path, "sha256": digest, "size": len(blob)}}
