"""The remote side of cloudcompute, and the wire format both sides share.

This one file is shipped to each node (once: its sha256 names the
directory) and started as ``python3 worker.py``. It keeps numpy and pandas
imported, reads framed requests on stdin and answers on stdout. Tasks run in
a child forked from the warm worker (one after another, re-forked after a
crash), so that a crash or the OOM killer takes only the task, and each
task's peak memory is measured.

The client imports the same file for the framing and the codecs, so both
ends always agree. It must run on the node's own Python (3.9 or newer) and
import nothing beyond the standard library at module level.

Frame: ``!I`` header length, a JSON header, then the blobs the header lists
in ``blobs`` (each ``!Q`` length + bytes, with its sha256 in the header).
"""
import hashlib
import io
import json
import os
import select
import signal
import struct
import sys
import time
import traceback
import types

_HDR = struct.Struct("!I")
_LEN = struct.Struct("!Q")
MAX_HEADER = 64 << 20


class WireError(Exception):
    """A frame was malformed or its checksum did not match."""


# ---------------------------------------------------------------- framing
def write_frame(out, header, blobs=(), digests=True):
    blobs = [bytes(b) if not isinstance(b, (bytes, memoryview)) else b for b in blobs]
    header = dict(header, blobs=[dict({"size": len(b)}, **(
        {"sha256": hashlib.sha256(b).hexdigest()} if digests else {})) for b in blobs])
    raw = json.dumps(header, separators=(",", ":")).encode()
    parts = [_HDR.pack(len(raw)), raw]
    for b in blobs:
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    for p in parts:
        out.write(p)
    out.flush()


def _read_exact(inp, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        chunk = inp.read(n - got)
        if not chunk:
            raise EOFError("stream closed after %d of %d bytes" % (got, n))
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    return buf


def read_frame(inp, verify=True):
    (n,) = _HDR.unpack(_read_exact(inp, _HDR.size))
    if n > MAX_HEADER:
        raise WireError("header of %d bytes is too large" % n)
    header = json.loads(_read_exact(inp, n))
    blobs = []
    for desc in header.get("blobs", []):
        (size,) = _LEN.unpack(_read_exact(inp, _LEN.size))
        if size != desc["size"]:
            raise WireError("blob size %d != announced %d" % (size, desc["size"]))
        data = _read_exact(inp, size)
        if verify or "sha256" in desc:
            got = hashlib.sha256(data).hexdigest()
            if got != desc.get("sha256"):
                raise WireError("sha256 mismatch: %s != %s" % (got, desc.get("sha256")))
        blobs.append(data)
    return header, blobs


# ---------------------------------------------------------------- codecs
def _optional(name):
    """The module if it can be imported (waits for an import under way elsewhere)."""
    try:
        return __import__(name)
    except ImportError:
        return None


def _have(name):
    return _optional(name) is not None


def encode(value, formats, allow_pickle=False):
    """Return (descriptor, blob). ``formats`` are what the receiver can read."""
    np = _optional("numpy")
    pd = _optional("pandas")
    if np is not None and isinstance(value, np.ndarray) and value.dtype != object \
            and "npy" in formats:
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return {"format": "npy"}, buf.getbuffer()
    if pd is not None and isinstance(value, pd.DataFrame):
        if "arrow" in formats and _have("pyarrow"):
            import pyarrow as pa
            table = pa.Table.from_pandas(value, preserve_index=True)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
            return {"format": "arrow"}, sink.getvalue().to_pybytes()
        if "npcols" in formats:
            try:
                return _encode_npcols(value)
            except TypeError:
                if not allow_pickle:
                    raise
    if pd is not None and isinstance(value, pd.Series) and "npcols" in formats:
        desc, blob = encode(value.to_frame(name=value.name if value.name is not None
                                           else "__series__"), formats, allow_pickle)
        return dict(desc, series=True), blob
    try:
        if "json" in formats:
            return {"format": "json"}, json.dumps(value, allow_nan=True).encode()
    except (TypeError, ValueError):
        pass
    if allow_pickle and "pickle" in formats:
        import pickle
        try:
            import cloudpickle as cp
        except ImportError:
            cp = pickle
        return {"format": "pickle"}, cp.dumps(value, protocol=4)
    raise TypeError("a value of type %s cannot be sent safely (arrays, DataFrames and "
                    "JSON values can); pass allow_pickle=True to allow pickle"
                    % type(value).__name__)


def _encode_npcols(df):
    """A pickle-free DataFrame format: one .npy per column in an .npz."""
    import numpy as np
    import pandas as pd
    arrays, cols = {}, []
    frame = df
    index = {"kind": "range", "start": 0, "stop": len(df), "step": 1}
    if isinstance(df.index, pd.RangeIndex):
        index = {"kind": "range", "start": df.index.start, "stop": df.index.stop,
                 "step": df.index.step, "name": df.index.name}
    else:
        frame = df.reset_index()
        index = {"kind": "columns", "names": [str(n) if n is not None else None
                                              for n in df.index.names],
                 "count": df.index.nlevels}
    for i, (name, col) in enumerate(frame.items()):
        key = "c%d" % i
        info = {"name": name if isinstance(name, (str, int, float)) else str(name)}
        if isinstance(col.dtype, pd.CategoricalDtype):
            arrays[key] = np.asarray(col.cat.codes)
            cats = col.cat.categories
            arrays[key + "_cat"] = _plain(np, np.asarray(cats))
            info["categorical"] = bool(col.cat.ordered)
        else:
            arrays[key] = _plain(np, col.to_numpy())
            info["dtype"] = str(col.dtype)
        cols.append(info)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return {"format": "npcols", "columns": cols, "index": index}, buf.getbuffer()


def _plain(np, arr):
    if arr.dtype == object:
        if all(isinstance(x, str) for x in arr):
            return arr.astype(str)
        raise TypeError("column of mixed Python objects cannot be sent without pickle")
    return arr


def load_npy(blob):
    """An .npy image as an array (never unpickling); a writable buffer (bytearray)
    becomes the array's memory without a copy."""
    import numpy as np
    fmt = np.lib.format
    if isinstance(blob, bytearray):
        head = io.BytesIO(bytes(memoryview(blob)[:65536]))
        version = fmt.read_magic(head)
        if version in ((1, 0), (2, 0)):
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(head)
            if not dtype.hasobject:
                count = 1
                for n in shape:
                    count *= n
                arr = np.frombuffer(blob, dtype=dtype, count=count, offset=head.tell())
                return arr.reshape(shape, order="F" if fortran else "C")
    return np.load(io.BytesIO(blob), allow_pickle=False)


def decode(desc, blob, allow_pickle=False):
    fmt = desc["format"]
    if fmt == "npy":
        return load_npy(blob)
    if fmt == "json":
        return json.loads(blob)
    if fmt == "arrow":
        import pyarrow as pa
        with pa.ipc.open_stream(pa.BufferReader(blob)) as r:
            return r.read_all().to_pandas()
    if fmt == "npcols":
        df = _decode_npcols(desc, blob)
        if desc.get("series"):
            s = df.iloc[:, 0]
            return s.rename(None) if s.name == "__series__" else s
        return df
    if fmt == "pickle":
        if not allow_pickle:
            raise WireError("refusing to unpickle a value: pass allow_pickle=True to accept it")
        import pickle
        return pickle.loads(blob)
    raise WireError("unknown format %r" % fmt)


def _decode_npcols(desc, blob):
    import numpy as np
    import pandas as pd
    data = np.load(io.BytesIO(blob), allow_pickle=False)
    columns = {}
    names = []
    for i, info in enumerate(desc["columns"]):
        key = "c%d" % i
        if "categorical" in info:
            col = pd.Categorical.from_codes(data[key], data[key + "_cat"],
                                            ordered=info["categorical"])
        else:
            col = data[key]
            if info.get("dtype") == "object" or col.dtype.kind == "U":
                col = col.astype(object)
        columns[i] = col
        names.append(info["name"])
    df = pd.DataFrame(columns)
    df.columns = names
    idx = desc["index"]
    if idx["kind"] == "range":
        df.index = pd.RangeIndex(idx["start"], idx["stop"], idx["step"], name=idx.get("name"))
    else:
        keys = list(df.columns[:idx["count"]])
        df = df.set_index(keys)
        df.index.names = idx["names"]
    return df


def formats_here():
    out = ["json", "npy", "npcols", "pickle"]
    if _have("pyarrow"):
        out.insert(0, "arrow")
    return out


def versions():
    info = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}
    for mod in ("numpy", "pandas", "pyarrow", "cloudpickle"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


# ---------------------------------------------------------------- tasks
_CODE = {}  # sha256 of a shipped module's source -> its code object


def remember_module(spec, blobs):
    """In the worker: compile a shipped module once; later tasks name it by hash."""
    if spec.get("kind") != "ref" or spec["sha256"] in _CODE or "blob" not in spec:
        return
    try:
        _CODE[spec["sha256"]] = compile(blobs[spec["blob"]],
                                        spec.get("filename", spec["module"]), "exec")
    except (SyntaxError, ValueError):
        pass  # the task's own process reports it


def _load_function(spec, blobs):
    if spec["kind"] == "ref":
        mod = types.ModuleType(spec["module"])
        mod.__file__ = spec.get("filename", "<cloudcompute:%s>" % spec["module"])
        sys.modules[spec["module"]] = mod
        code = _CODE.get(spec["sha256"])
        if code is None:
            if "blob" not in spec:
                raise WireError("module %s (%s) was never sent to this worker"
                                % (spec["module"], spec["sha256"][:12]))
            code = _CODE[spec["sha256"]] = compile(blobs[spec["blob"]], mod.__file__, "exec")
        exec(code, mod.__dict__)
        obj = mod
        for part in spec["qualname"].split("."):
            obj = getattr(obj, part)
        return obj
    if spec["kind"] == "pickle":
        import pickle
        return pickle.loads(blobs[spec["blob"]])
    raise WireError("unknown function kind %r" % spec["kind"])


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


def _run_one(req, blobs):
    """In the task process: run one task; return its result frame's parts."""
    allow = req.get("allow_pickle", False)
    try:
        unstage(req, blobs)
        fn = _load_function(req["fn"], blobs)
        args = [decode(d, blobs[d["blob"]], allow) for d in req["args"]]
        kwargs = {k: decode(d, blobs[d["blob"]], allow) for k, d in req["kwargs"].items()}
        value = fn(*args, **kwargs)
        desc, blob = encode(value, req["result_formats"], allow)
        header = {"op": "result", "ok": True, "result": dict(desc, blob=0)}
        staged = stage_blob(req, blob)
        if staged:
            header["staged"], blob = staged, b""
        return header, [blob]
    except BaseException as exc:  # report every failure, SystemExit included
        return {"op": "result", "ok": False, "exc_type": type(exc).__name__,
                "message": str(exc), "traceback": traceback.format_exc()}, []


def _task_loop(req_in, res_out):
    """The task process: one task at a time, for the life of the worker."""
    inp = os.fdopen(req_in, "rb")
    out = os.fdopen(res_out, "wb")
    while True:
        try:
            req, blobs = read_frame(inp, verify=False)
        except EOFError:
            return
        _peak_rss_kb(reset=True)
        header, rblobs = _run_one(req, blobs)
        sys.stdout.flush()
        sys.stderr.flush()
        header["peak_rss_kb"] = _peak_rss_kb()
        write_frame(out, header, rblobs, digests=False)


class TaskProcess:
    """A child forked once from the warm worker that runs tasks one after another.

    Forking per task cost several milliseconds here; a crash, ``os._exit`` or
    the OOM killer still takes only this process, and the next task gets a
    new one. Its stdout and stderr are streamed back as log frames."""

    def __init__(self):
        self.pid = None

    def _start(self):
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)  # not the worker's channel
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
                lo, hi = sorted((req_r, res_w))  # close everything else
                os.closerange(3, lo)
                os.closerange(lo + 1, hi)
                os.closerange(hi + 1, max(hi + 1, os.sysconf("SC_OPEN_MAX")))
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _task_loop(req_r, res_w)
            finally:
                os._exit(0)
        for fd in (req_r, res_w, out_w):
            os.close(fd)
        self.pid = pid
        self.req = os.fdopen(req_w, "wb")
        self.res, self.out = res_r, out_r

    def _stop(self):
        """After the process died (or to end it): close its pipes, reap it."""
        try:
            self.req.close()
        except OSError:
            pass  # a write to the dead process may have failed half-way
        for fd in (self.res, self.out):
            os.close(fd)
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        return status

    def run(self, req, blobs, send):
        if self.pid is None:
            self._start()
        t0 = time.monotonic()
        try:
            write_frame(self.req, req, blobs, digests=False)
        except BrokenPipeError:
            pass  # it died; the status below says how
        result = bytearray()
        need = None
        while need is None or len(result) < need:
            ready, _, _ = select.select([self.res, self.out], [], [])
            if self.out in ready:
                self._forward(req, send)
            if self.res in ready:
                chunk = os.read(self.res, 1 << 20)
                if not chunk:
                    return self._died(t0)
                result += chunk
                need = _frame_length(result)
        while select.select([self.out], [], [], 0)[0]:  # output written before the result
            if not self._forward(req, send):
                break
        header, rblobs = read_frame(io.BytesIO(bytes(result)), verify=False)
        header["duration"] = time.monotonic() - t0
        return header, rblobs

    def _forward(self, req, send):
        chunk = os.read(self.out, 1 << 20)
        if chunk:
            send({"op": "log", "id": req["id"], "text": chunk.decode("utf-8", "replace")})
        return bool(chunk)

    def _died(self, t0):
        while select.select([self.out], [], [], 0)[0] and os.read(self.out, 1 << 20):
            pass
        status = self._stop()
        meta = {"op": "result", "ok": False, "duration": time.monotonic() - t0,
                "peak_rss_kb": 0}
        if os.WIFSIGNALED(status):
            return dict(meta, killed=os.WTERMSIG(status)), []
        return dict(meta, exc_type="WorkerError", traceback="",
                    message="task exited (%d) without a result" % os.WEXITSTATUS(status)), []


def _frame_length(buf):
    """Total length of the frame at the start of ``buf``, once its header is in."""
    if len(buf) < _HDR.size:
        return None
    (n,) = _HDR.unpack_from(buf)
    if len(buf) < _HDR.size + n:
        return None
    header = json.loads(bytes(buf[_HDR.size:_HDR.size + n]))
    return _HDR.size + n + sum(_LEN.size + b["size"] for b in header.get("blobs", []))


_TASKS = TaskProcess()


def run_task(req, blobs, send):
    """Run one task in the task process; stream its output; its result and peak memory."""
    return _TASKS.run(req, blobs, send)


class _ClientOnlyFinder:
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


def _staged_missing(req):
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


def main():
    sys.meta_path.append(_ClientOnlyFinder())
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    # Keep the protocol stream clean: stray prints go to stderr.
    sys.stdout = sys.stderr
    for mod in ("numpy", "pandas", "pyarrow"):
        try:
            __import__(mod)
        except ImportError:
            pass
        except Exception as exc:  # e.g. a binary built against another numpy
            sys.stderr.write("cloudcompute worker: importing %s failed: %r\n" % (mod, exc))
            raise

    def send(header, blobs=()):
        write_frame(out, header, blobs)

    send({"op": "hello", "versions": versions(), "formats": formats_here(),
          "pid": os.getpid()})
    while True:
        try:
            req, blobs = read_frame(inp)
        except EOFError:
            return 0
        except WireError as exc:
            send({"op": "wire_error", "message": str(exc)})
            continue
        op = req.get("op")
        if op == "task":
            missing = _staged_missing(req)
            if missing:
                send({"op": "wire_error", "id": req.get("id"), "message": missing})
                continue
            remember_module(req.get("fn", {}), blobs)
            header, rblobs = run_task(req, blobs, send)
            header["id"] = req["id"]
            send(header, rblobs)
        elif op == "ping":
            send({"op": "pong", "id": req.get("id")})
        elif op == "exit":
            return 0
        else:
            send({"op": "wire_error", "message": "unknown op %r" % op})


if __name__ == "__main__":
    sys.exit(main())
