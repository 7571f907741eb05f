"""Readers of the value formats whose bytes may come from an untrusted peer:
Arrow IPC streams and the .npz images of DataFrame columns (``npcols``).

Each checks the whole image before the library that reads it sees it: no
Arrow extension type (reading one runs code registered for its name), no
compressed batch or member (a bomb), no size announced beyond the bytes that
are there. Shipped to the nodes with :mod:`wire`, which calls these from
``decode``; standard library only at module level.
"""
import io
import struct

from .wire import WireError, npy_count, npy_header

_EXT_KEY = b"ARROW:extension:name"


def decode_arrow(blob):
    """A DataFrame from an Arrow IPC stream, read only after every message was
    checked: no extension type (reading one runs the code registered for its
    name, CVE-2023-47248 for pickle-based ones) and no compressed batch."""
    import pyarrow as pa
    source = pa.py_buffer(blob)
    for message in pa.ipc.MessageReader.open_stream(pa.BufferReader(source)):
        meta = message.metadata.to_pybytes()
        if message.type == "schema":
            # Extension types are named by this key in a field's metadata, and
            # pyarrow resolves them while it opens the stream: check the raw bytes.
            if _EXT_KEY in meta:
                raise WireError("Arrow schema names an extension type; refused")
        elif message.type in ("record batch", "dictionary"):
            if _arrow_batch_compressed(meta, message.type == "dictionary"):
                raise WireError("Arrow %s is compressed; only uncompressed batches "
                                "are accepted" % message.type)
        else:
            raise WireError("Arrow message of type %r is not accepted" % message.type)
    with pa.ipc.open_stream(pa.BufferReader(source)) as reader:
        for field in reader.schema:
            refuse_extension(pa, field, field.name)
        return reader.read_all().to_pandas()


def refuse_extension(pa, field, path):
    typ = field.type
    if isinstance(typ, pa.ExtensionType) or _EXT_KEY in (field.metadata or {}):
        raise WireError("Arrow field %s has an extension type; refused" % path)
    if isinstance(typ, pa.DictionaryType):
        refuse_extension(pa, pa.field("value", typ.value_type), path + ".value")
        return
    n = typ.num_fields
    if not n:
        return
    get = getattr(typ, "field", None)
    if get is not None:
        children = [get(i) for i in range(n)]
    else:  # older pyarrow: lists and maps name their children
        children = [getattr(typ, a) for a in ("value_field", "key_field", "item_field")
                    if hasattr(typ, a)]
        if not children:
            raise WireError("Arrow field %s has a nested type %s that cannot be checked"
                            % (path, typ))
    for child in children:
        refuse_extension(pa, child, "%s.%s" % (path, child.name))


def _fb_table(buf, pos):
    """(position, vtable position) of the flatbuffer table at ``pos``."""
    (soff,) = struct.unpack_from("<i", buf, pos)
    return pos, pos - soff


def _fb_field(buf, table, idx):
    """Position of field ``idx`` of ``table``, or None where it is absent."""
    pos, vt = table
    vt_size, _ = struct.unpack_from("<HH", buf, vt)
    if 4 + 2 * idx >= vt_size:
        return None
    (off,) = struct.unpack_from("<H", buf, vt + 4 + 2 * idx)
    return pos + off if off else None


def _fb_ref(buf, at):
    (rel,) = struct.unpack_from("<I", buf, at)
    return _fb_table(buf, at + rel)


def _arrow_batch_compressed(meta, dictionary):
    """Whether the RecordBatch (or DictionaryBatch) message ``meta`` (an Arrow
    ``Message`` flatbuffer) sets ``compression``: such buffers decompress to
    whatever size they state, a bomb."""
    try:
        message = _fb_ref(meta, 0)
        at = _fb_field(meta, message, 2)  # Message.header
        if at is None:
            raise WireError("Arrow batch message without a header")
        batch = _fb_ref(meta, at)
        if dictionary:
            at = _fb_field(meta, batch, 1)  # DictionaryBatch.data
            if at is None:
                raise WireError("Arrow dictionary batch without data")
            batch = _fb_ref(meta, at)
        return _fb_field(meta, batch, 3) is not None  # RecordBatch.compression
    except struct.error as exc:
        raise WireError("malformed Arrow message: %s" % exc) from None


_NPZ_SLACK = 1 << 10


def checked_npz(blob):
    """An open file of the .npz image ``blob`` once every member was checked:
    stored (a deflated member can expand without bound), its sizes within the
    image, and each .npy member's header announcing no more data than it holds."""
    import zipfile

    import numpy as np
    f = io.BytesIO(blob)
    with zipfile.ZipFile(f) as zf:
        members = zf.infolist()
        for info in members:
            if info.flag_bits & 0x1:
                raise WireError("npz member %r is encrypted" % info.filename)
            if info.compress_type != zipfile.ZIP_STORED:
                raise WireError("npz member %r is compressed; only stored members are "
                                "accepted" % info.filename)
            if info.file_size != info.compress_size:
                raise WireError("npz member %r is stored but announces %d bytes in %d"
                                % (info.filename, info.file_size, info.compress_size))
        total = sum(info.file_size for info in members)
        if total > len(blob) + _NPZ_SLACK:
            raise WireError("npz members announce %d bytes in an image of %d"
                            % (total, len(blob)))
        for info in members:
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as member:
                shape, _, dtype = npy_header(np, member)
                room = info.file_size - member.tell()
            need = npy_count(shape) * dtype.itemsize
            if need > room:
                raise WireError("npz member %r announces %d bytes of data; it holds %d"
                                % (info.filename, need, room))
    f.seek(0)
    return f


def decode_npcols(desc, blob):
    import numpy as np
    import pandas as pd
    data = np.load(checked_npz(blob), allow_pickle=False)
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
