"""The wire format of the worker channel and the value codecs, shared by both ends.

Shipped to each node beside the worker (see :mod:`cloudcompute.jobs.protocol`
for what travels), and imported by the client, so both ends always agree.
It must run on the node's own Python (3.9 or newer) and import nothing
beyond the standard library at module level.

Frame: ``!I`` header length, a JSON header, then the blobs the header lists
in ``blobs`` (each ``!Q`` length + bytes, with its sha256 in the header).

What a node sends is untrusted input: :func:`read_frame` with ``max_blob``
checks every announced size against its caps before allocating anything, and
buffers grow only as bytes arrive, so a size that is claimed but never sent
costs nothing.
"""
import hashlib
import io
import json
import os
import struct
import sys

_HDR = struct.Struct("!I")
_LEN = struct.Struct("!Q")
MAX_HEADER = 64 << 20
"""Cap on a header the client wrote (what a node's worker parses)."""
MAX_NODE_HEADER = 4 << 20
"""Cap on a header a node wrote (what the client parses)."""
_CHUNK = 4 << 20
"""Reads are at most this large; a blob over it grows by such chunks as they arrive."""


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


def default_max_result_bytes():
    """The default cap on the bytes one answer from a node may carry: a quarter
    of this machine's physical memory (``SC_PHYS_PAGES`` x ``SC_PAGE_SIZE``),
    or 4 GiB where that is unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = -1
    return total // 4 if total > 0 else 4 << 30


def _read_exact(inp, n):
    """Exactly ``n`` bytes of ``inp`` in a new bytearray, or EOFError.

    Up to ``_CHUNK`` bytes are allocated at once; beyond that the buffer grows
    as bytes arrive (never to more than what was read plus one chunk)."""
    if n <= _CHUNK:
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
    buf = bytearray()
    while len(buf) < n:
        chunk = inp.read(min(n - len(buf), _CHUNK))
        if not chunk:
            raise EOFError("stream closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def _blob_sizes(header):
    """The blob sizes a parsed header announces (WireError if it is malformed)."""
    if not isinstance(header, dict) or not isinstance(header.get("blobs", []), list):
        raise WireError("frame header is not a JSON object with a list of blobs")
    sizes = []
    for i, desc in enumerate(header.get("blobs", [])):
        size = desc.get("size") if isinstance(desc, dict) else None
        if type(size) is not int or size < 0:
            raise WireError("frame header gives blob %d no valid size" % i)
        sizes.append(size)
    return sizes


def read_frame(inp, verify=True, max_blob=None, max_header=None):
    """(header, blobs) of the next frame of ``inp``; blobs are bytearrays.

    For a stream from a node, pass ``max_blob`` (e.g.
    :func:`default_max_result_bytes`): the header length is checked against
    ``max_header`` (default: ``MAX_NODE_HEADER`` with ``max_blob``, else
    ``MAX_HEADER``), then every blob size the header announces, and their
    total, against ``max_blob``, all before a blob's buffer is allocated.
    A stream that ends early raises EOFError; a cap passed, a malformed
    header or a checksum mismatch raise WireError."""
    if max_header is None:
        max_header = MAX_HEADER if max_blob is None else MAX_NODE_HEADER
    (n,) = _HDR.unpack(_read_exact(inp, _HDR.size))
    if n > max_header:
        raise WireError("the sender announced a header of %d bytes; the cap is %d"
                        % (n, max_header))
    try:
        header = json.loads(_read_exact(inp, n))
    except (ValueError, RecursionError) as exc:
        raise WireError("frame header is not valid JSON: %s" % exc) from None
    sizes = _blob_sizes(header)
    if max_blob is not None:
        for size in sizes:
            if size > max_blob:
                raise WireError("the sender announced a blob of %d bytes; the cap "
                                "(max_result_bytes) is %d" % (size, max_blob))
        if sum(sizes) > max_blob:
            raise WireError("the sender announced %d blobs of %d bytes in all; the cap "
                            "(max_result_bytes) is %d" % (len(sizes), sum(sizes), max_blob))
    blobs = []
    for i, desc in enumerate(header.get("blobs", [])):
        (size,) = _LEN.unpack(_read_exact(inp, _LEN.size))
        if size != sizes[i]:
            raise WireError("blob size %d != announced %d" % (size, sizes[i]))
        data = _read_exact(inp, size)
        if verify or "sha256" in desc:
            got = hashlib.sha256(data).hexdigest()
            if got != desc.get("sha256"):
                raise WireError("sha256 mismatch: %s != %s" % (got, desc.get("sha256")))
        blobs.append(data)
    return header, blobs


def frame_length(buf):
    """Total length of the frame at the start of ``buf``, once its header is in."""
    if len(buf) < _HDR.size:
        return None
    (n,) = _HDR.unpack_from(buf)
    if n > MAX_HEADER:
        raise WireError("header of %d bytes is too large" % n)
    if len(buf) < _HDR.size + n:
        return None
    header = json.loads(bytes(buf[_HDR.size:_HDR.size + n]))
    return _HDR.size + n + sum(_LEN.size + b["size"] for b in header.get("blobs", []))


def parse_frame(view, verify=True):
    """(header, blobs) of one whole frame held in memory; blobs are copies.
    A checksum mismatch raises WireError with the request's ``id``."""
    (n,) = _HDR.unpack_from(view)
    header = json.loads(bytes(view[_HDR.size:_HDR.size + n]))
    off = _HDR.size + n
    blobs = []
    for desc in header.get("blobs", []):
        (size,) = _LEN.unpack_from(view, off)
        off += _LEN.size
        if size != desc["size"]:
            raise WireError("blob size %d != announced %d" % (size, desc["size"]))
        data = bytearray(view[off:off + size])
        off += size
        if verify or "sha256" in desc:
            got = hashlib.sha256(data).hexdigest()
            if got != desc.get("sha256"):
                err = WireError("sha256 mismatch: %s != %s" % (got, desc.get("sha256")))
                err.id = header.get("id")
                raise err
        blobs.append(data)
    return header, blobs


# ---------------------------------------------------------------- codecs
def _optional(name):
    """The module if it can be imported (waits for an import under way elsewhere)."""
    try:
        return __import__(name)
    except ImportError:
        return None


def _loaded(module, name):
    """``module.name`` if the module is imported already, else None: a value of
    that type means its module is, so nothing needs importing to tell."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _have(name):
    return _optional(name) is not None


def encode(value, formats, allow_pickle=False):
    """Return (descriptor, blob). ``formats`` are what the receiver can read."""
    ndarray = _loaded("numpy", "ndarray")
    frame, series = _loaded("pandas", "DataFrame"), _loaded("pandas", "Series")
    if ndarray is not None and isinstance(value, ndarray) and value.dtype != object \
            and "npy" in formats:
        import numpy as np
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return {"format": "npy"}, buf.getbuffer()
    if frame is not None and isinstance(value, frame):
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
    if series is not None and isinstance(value, series) and "npcols" in formats:
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


def npy_header(np, fp):
    """(shape, fortran, dtype) of the .npy image ``fp`` is at the start of."""
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fp)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fp)
    read = getattr(fmt, "_read_array_header", None)
    if read is None:
        raise WireError(".npy format version %d.%d is not supported here" % version)
    return read(fp, version)


def npy_count(shape):
    count = 1
    for n in shape:
        count *= n
    return count


def load_npy(blob):
    """An .npy image as an array (never unpickling); a writable buffer (bytearray)
    becomes the array's memory without a copy. An image whose header announces
    more data than it holds is refused before anything is allocated."""
    import numpy as np
    head = io.BytesIO(bytes(memoryview(blob)[:65536]))
    shape, fortran, dtype = npy_header(np, head)
    if not dtype.hasobject:
        count = npy_count(shape)
        if count * dtype.itemsize > len(blob) - head.tell():
            raise WireError(".npy header announces %d bytes of data; the image holds %d"
                            % (count * dtype.itemsize, len(blob) - head.tell()))
        if isinstance(blob, bytearray):
            arr = np.frombuffer(blob, dtype=dtype, count=count, offset=head.tell())
            return arr.reshape(shape, order="F" if fortran else "C")
    return np.load(io.BytesIO(blob), allow_pickle=False)


def decode(desc, blob, allow_pickle=False, offered=None):
    """The value a (descriptor, blob) pair carries.

    ``offered``: the formats the receiver asked for; a value in any other
    format is refused. Every format but pickle is read without running code
    named by the data, and a blob that would expand far beyond its size
    (compressed .npz members, compressed Arrow batches) is refused; malformed
    data raises WireError."""
    fmt = desc.get("format") if isinstance(desc, dict) else None
    if offered is not None and fmt not in offered:
        raise WireError("node answered in format %r, which was not offered (%s)"
                        % (fmt, ", ".join(map(str, offered))))
    if fmt == "pickle":
        if not allow_pickle:
            raise WireError("refusing to unpickle a value: pass allow_pickle=True to accept it")
        import pickle
        return pickle.loads(blob)
    if fmt not in ("npy", "json", "arrow", "npcols"):
        raise WireError("unknown format %r" % (fmt,))
    import zipfile
    try:
        return _decode_safe(fmt, desc, blob)
    except (ValueError, KeyError, IndexError, TypeError, EOFError, RecursionError,
            zipfile.BadZipFile) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError("malformed %s value: %s: %s"
                        % (fmt, type(exc).__name__, exc)) from exc


def _decode_safe(fmt, desc, blob):
    if fmt == "npy":
        return load_npy(blob)
    if fmt == "json":
        return json.loads(blob)
    from . import untrusted  # not at the top: it imports this module
    if fmt == "arrow":
        return untrusted.decode_arrow(blob)
    df = untrusted.decode_npcols(desc, blob)
    if desc.get("series"):
        s = df.iloc[:, 0]
        return s.rename(None) if s.name == "__series__" else s
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
