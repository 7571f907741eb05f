"""A node's bytes are untrusted input: forged sizes, bombs and unoffered formats
are refused before they cost memory or run code (STYLE.md point 19)."""
import io
import json
import os
import pickle
import struct
import sys
import threading
import time
import zipfile

import numpy as np
import pandas as pd
import pytest

from cloudcompute.exceptions import SSHError
from cloudcompute.jobs import untrusted, wire
from cloudcompute.ssh import bulk, client

pa = pytest.importorskip("pyarrow")
MiB = 1 << 20
GiB = 1 << 30
BUDGET = 64 * MiB
"""The most any of these forged inputs may cost the reader."""


def rss():
    """This process's resident memory in bytes (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def peak_growth(fn):
    """Run ``fn``; return (its exception or None, how far RSS rose above where it
    started at its peak). The peak is the kernel's high-water mark (VmHWM, reset
    through clear_refs) or, where that cannot be reset, a 1 ms sampler's."""
    before = rss()
    peak = [before]
    stop = threading.Event()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        sampler = None
    except OSError:
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    try:
        fn()
        exc = None
    except Exception as e:  # noqa: BLE001 - the caller checks which
        exc = e
    stop.set()
    if sampler is not None:
        sampler.join()
    else:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak[0] = int(line.split()[1]) * 1024
    return exc, peak[0] - before


def forged_frame(sizes, header_len=None):
    """The start of a frame whose header announces blobs of ``sizes`` bytes,
    followed by the first blob's size prefix and nothing else."""
    raw = json.dumps({"op": "result", "blobs": [{"size": s, "sha256": "0" * 64}
                                                for s in sizes]}).encode()
    return (struct.pack("!I", len(raw) if header_len is None else header_len) + raw
            + struct.pack("!Q", sizes[0]))


class Trickle:
    """A stream that delivers ``prefix``, then ``payload`` zero bytes 1 MiB at a
    time, then ends; it records this process's RSS when it ends, while the
    reader still holds its buffer."""

    def __init__(self, prefix, payload):
        self.prefix = io.BytesIO(prefix)
        self.left = payload
        self.rss_at_end = None
        self.chunk = bytes(MiB)

    def read(self, n=-1):
        got = self.prefix.read(n)
        if got:
            return got
        if self.left <= 0:
            self.rss_at_end = rss()
            return b""
        k = min(n, MiB, self.left)
        self.left -= k
        return self.chunk[:k]

    def readinto(self, view):
        got = self.read(len(view))
        view[:len(got)] = got
        return len(got)


# ------------------------------------------------------------ frames
def test_read_frame_refuses_a_forged_100_gib_blob_at_once():
    t0 = time.monotonic()
    with pytest.raises(wire.WireError, match=r"blob of 107374182400 bytes.*cap.* 6442450944"):
        wire.read_frame(io.BytesIO(forged_frame([100 * GiB])), True, max_blob=6 * GiB)
    # each blob under the cap, their total over it
    with pytest.raises(wire.WireError, match=r"2 blobs of 6442450944 bytes in all"):
        wire.read_frame(io.BytesIO(forged_frame([3 * GiB, 3 * GiB])), max_blob=5 * GiB)
    assert time.monotonic() - t0 < 1


def test_read_frame_caps_a_node_header_at_4_mib():
    stream = forged_frame([1], header_len=5 * MiB)
    with pytest.raises(wire.WireError, match=r"header of 5242880 bytes; the cap is 4194304"):
        wire.read_frame(io.BytesIO(stream), max_blob=GiB)
    assert wire.MAX_NODE_HEADER == 4 * MiB


@pytest.mark.parametrize("max_blob", [None, 2 * GiB])
def test_an_unkept_1_gib_claim_costs_only_what_arrived(max_blob):
    stream = Trickle(forged_frame([GiB]), 20 * MiB)
    before = rss()
    with pytest.raises(EOFError, match="after 20971520 of 1073741824"):
        wire.read_frame(stream, max_blob=max_blob)
    assert stream.rss_at_end is not None
    assert stream.rss_at_end - before < BUDGET


def test_frames_under_the_caps_still_read_into_writable_buffers():
    blobs = [os.urandom(9 * MiB + 3), b"", b"small"]
    buf = io.BytesIO()
    wire.write_frame(buf, {"op": "result"}, blobs)
    header, got = wire.read_frame(io.BytesIO(buf.getvalue()), max_blob=64 * MiB)
    assert header["op"] == "result" and got == blobs
    assert all(isinstance(b, bytearray) for b in got)
    with pytest.raises(EOFError):
        wire.read_frame(io.BytesIO(buf.getvalue()[:-1]), max_blob=64 * MiB)


def test_default_result_cap_is_a_quarter_of_physical_memory():
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert wire.default_max_result_bytes() == ram // 4


# ------------------------------------------------------------ downloads
def test_read_sized_refuses_a_forged_100_gib_file_at_once():
    stream = io.BytesIO((100 * GiB).to_bytes(8, "big"))
    with pytest.raises(SSHError, match=r"107374182400 bytes; the cap .* 6442450944") as e:
        bulk.read_sized(stream.readinto, "n1", "/tmp/x", max_bytes=6 * GiB)
    assert e.value.fatal


def test_read_sized_of_an_unkept_1_gib_claim_costs_only_what_arrived():
    stream = Trickle(GiB.to_bytes(8, "big"), 20 * MiB)
    before = rss()
    with pytest.raises(SSHError, match="20971520 of 1073741824") as e:
        bulk.read_sized(stream.readinto, "n1", "/tmp/x")
    assert not e.value.fatal
    assert stream.rss_at_end - before < BUDGET


def test_read_sized_reads_files_over_one_chunk():
    data = os.urandom(9 * MiB + 5)
    stream = io.BytesIO(len(data).to_bytes(8, "big") + data)
    moved = []
    got = bulk.read_sized(stream.readinto, "n1", "/tmp/x", moved.append, max_bytes=len(data))
    assert got == data and isinstance(got, bytearray) and sum(moved) == len(data)


def test_openssh_download_over_the_cap_stops_the_transfer(tmp_path, monkeypatch):
    """The node keeps its side open: a refused download must not wait for it."""
    fake = tmp_path / "ssh"
    fake.write_text("#!%s\nimport sys, time\nif '-O' in sys.argv: sys.exit(0)\n"
                    "sys.stdout.buffer.write((100 << 30).to_bytes(8, 'big'))\n"
                    "sys.stdout.buffer.flush()\ntime.sleep(20)\n" % sys.executable)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (tmp_path, os.pathsep, os.environ["PATH"]))
    fast = bulk.OpenSSHBulk("n1", "192.0.2.1", "u", "/nonexistent", ["ssh-ed25519 AAAA"])
    t0 = time.monotonic()
    try:
        with pytest.raises(SSHError, match="the cap") as e:
            fast.download("/tmp/x", max_bytes=GiB)
    finally:
        fast.close()
    assert e.value.fatal and time.monotonic() - t0 < 10


# ------------------------------------------------------------ commands
class Pieces:
    """A byte stream handed out from an iterable of pieces."""

    def __init__(self, pieces):
        self.it = iter(pieces)
        self.cur = memoryview(b"")

    def ready(self):
        while not len(self.cur):
            nxt = next(self.it, None)
            if nxt is None:
                return False
            self.cur = memoryview(nxt)
        return True

    def take(self, n):
        if not self.ready():
            return b""
        got, self.cur = self.cur[:n], self.cur[n:]
        return bytes(got)


class FakeChannel:
    """What _drain, download and run use of a paramiko Channel."""

    def __init__(self, stdout=(), stderr=(), code=0):
        self.out, self.err, self.code = Pieces(stdout), Pieces(stderr), code
        self.closed = False
        self.r, self.w = os.pipe()
        os.write(self.w, b"x")  # select() finds it readable

    def recv_ready(self):
        return self.out.ready()

    def recv(self, n):
        return self.out.take(n)

    def recv_stderr_ready(self):
        return self.err.ready()

    def recv_stderr(self, n):
        return self.err.take(n)

    def exit_status_ready(self):
        return not self.out.ready() and not self.err.ready()

    def recv_exit_status(self):
        return self.code

    def fileno(self):
        return self.r

    def exec_command(self, command):
        self.command = command

    def shutdown_write(self):
        pass

    def close(self):
        if not self.closed:
            os.close(self.r)
            os.close(self.w)
        self.closed = True


def hundred_mib():
    chunk = b"a" * MiB
    for _ in range(99):
        yield chunk
    yield b"b" * (MiB - 4) + b"TAIL"


def test_drain_keeps_the_tail_of_100_mib():
    chan = FakeChannel(hundred_mib(), [b"e" * (20 * MiB), b"ERR"])
    out, err, truncated = client._drain(chan, None)
    chan.close()
    marker = b"[... %d bytes dropped ...]\n" % (100 * MiB - client.DRAIN_LIMIT)
    assert truncated and out.startswith(marker) and out.endswith(b"TAIL")
    assert len(out) - len(marker) == client.DRAIN_LIMIT == 16 * MiB
    assert err.endswith(b"ERR") and len(err) <= client.DRAIN_LIMIT + len(marker)
    short = FakeChannel([b"hello"], [b"warn"])
    assert client._drain(short, None, limit=5) == (b"hello", b"warn", False)
    short.close()


class FakeClient:
    def __init__(self, chan):
        self.chan = chan

    def get_transport(self):
        return self

    def is_active(self):
        return True

    def open_session(self, timeout=None):
        return self.chan


def connection(chan):
    conn = client.NodeConnection("n1", "192.0.2.1", "u", "/nonexistent", ["ssh-ed25519 AAAA"])
    conn._client = FakeClient(chan)
    return conn


def test_run_reports_truncated_output():
    chan = FakeChannel(hundred_mib())
    result = connection(chan).run(["yes"])
    assert result.truncated and result.stdout.endswith("TAIL")
    assert len(result.stdout) < client.DRAIN_LIMIT + 100
    assert not connection(FakeChannel([b"ok\n"])).run("true").truncated


def test_paramiko_download_over_the_cap_is_refused(monkeypatch):
    monkeypatch.setenv("CLOUDCOMPUTE_BULK", "paramiko")
    chan = FakeChannel([(100 * GiB).to_bytes(8, "big")])
    with pytest.raises(SSHError, match="the cap") as e:
        connection(chan).download("/tmp/x", max_bytes=GiB)
    assert e.value.fatal and chan.closed


# ------------------------------------------------------------ codecs
def test_a_format_that_was_not_offered_is_refused():
    blob = pickle.dumps({"a": 1})
    with pytest.raises(wire.WireError, match="format 'pickle', which was not offered"):
        wire.decode({"format": "pickle"}, blob, allow_pickle=True, offered=["npy", "json"])
    desc, blob = wire.encode([1, 2], ["json"])
    with pytest.raises(wire.WireError, match="not offered"):
        wire.decode(desc, blob, offered=["npy", "npcols"])
    assert wire.decode(desc, blob, offered=["npy", "json"]) == [1, 2]


NPZ_ROWS = 160 * MiB


@pytest.fixture(scope="module")
def npz_bomb():
    """An .npz whose one deflated member is 160 MiB of zeros in ~0.7 MiB."""
    f = io.BytesIO()
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "|u1", "fortran_order": False, "shape": (NPZ_ROWS,)})
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("c0.npy", "w", force_zip64=True) as m:
            m.write(head.getvalue())
            zeros = bytes(4 * MiB)
            for _ in range(NPZ_ROWS // len(zeros)):
                m.write(zeros)
    return f.getvalue()


NPZ_DESC = {"format": "npcols", "columns": [{"name": "z", "dtype": "uint8"}],
            "index": {"kind": "range", "start": 0, "stop": NPZ_ROWS, "step": 1}}


def test_an_npz_bomb_is_refused_without_decompressing(npz_bomb):
    assert len(npz_bomb) < 2 * MiB
    exc, growth = peak_growth(lambda: wire.decode(NPZ_DESC, bytearray(npz_bomb),
                                                  offered=["npcols"]))
    assert isinstance(exc, wire.WireError), exc
    assert "npz member 'c0.npy' is compressed; only stored members are accepted" in str(exc)
    assert growth < BUDGET


def test_npy_headers_that_announce_more_than_they_hold_are_refused():
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (100 * GiB // 8,)})
    npy = head.getvalue() + bytes(64)
    for blob in (bytearray(npy), npy):  # without copy, and through np.load
        exc, growth = peak_growth(lambda b=blob: wire.decode({"format": "npy"}, b))
        assert isinstance(exc, wire.WireError) and "announces 107374182400 bytes" in str(exc)
        assert growth < BUDGET
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("c0.npy", npy)
    desc = dict(NPZ_DESC, index={"kind": "range", "start": 0, "stop": 1, "step": 1})
    exc, growth = peak_growth(lambda: wire.decode(desc, bytearray(f.getvalue())))
    assert isinstance(exc, wire.WireError), exc
    assert "npz member 'c0.npy' announces 107374182400 bytes" in str(exc)
    assert growth < BUDGET


def test_stored_npcols_still_decode():
    df = pd.DataFrame({"a": np.arange(5), "s": list("abcde")})
    desc, blob = wire.encode(df, ["npcols"])
    got = wire.decode(desc, bytearray(blob), offered=["npcols"])
    pd.testing.assert_frame_equal(got, df)


# ------------------------------------------------------------ Arrow
DESERIALIZED = []


class Trap(pa.ExtensionType):
    """An extension type whose deserialization (the CVE-2023-47248 path) is traced."""

    def __init__(self):
        super().__init__(pa.int64(), "cloudcompute.test.trap")

    def __arrow_ext_serialize__(self):
        return b"would run code here"

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        DESERIALIZED.append(serialized)
        return cls()


@pytest.fixture
def trap():
    pa.register_extension_type(Trap())
    DESERIALIZED.clear()
    try:
        yield Trap()
    finally:
        pa.unregister_extension_type("cloudcompute.test.trap")


def ipc(table, **options):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema,
                           options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def test_arrow_extension_types_are_refused_before_anything_is_deserialized(trap):
    ext = pa.ExtensionArray.from_storage(trap, pa.array([1, 2, 3]))
    tables = [pa.table({"a": ext}),
              pa.table({"s": pa.StructArray.from_arrays([ext], ["inner"])}),
              pa.table({"l": pa.ListArray.from_arrays(pa.array([0, 1, 3]), ext)})]
    for table in tables:
        blob = ipc(table)
        with pytest.raises(wire.WireError, match="extension type"):
            wire.decode({"format": "arrow"}, bytearray(blob), offered=["arrow"])
    assert DESERIALIZED == []


def test_the_arrow_schema_walk_finds_nested_extension_types(trap):
    for typ in (trap, pa.struct([pa.field("x", trap)]), pa.list_(trap),
                pa.map_(pa.string(), pa.list_(pa.struct([pa.field("y", trap)])))):
        with pytest.raises(wire.WireError, match="extension type"):
            untrusted.refuse_extension(pa, pa.field("c", typ), "c")
    untrusted.refuse_extension(pa, pa.field("c", pa.map_(pa.string(), pa.list_(pa.int8()))), "c")


def test_compressed_arrow_batches_are_refused():
    codec = next((c for c in ("lz4", "zstd") if pa.Codec.is_available(c)), None)
    assert codec is not None, "pyarrow's wheels carry lz4 and zstd; this one has neither"
    blob = ipc(pa.table({"z": np.zeros(MiB, np.int64)}), compression=codec)
    assert len(blob) < 64 << 10
    with pytest.raises(wire.WireError, match="record batch is compressed"):
        wire.decode({"format": "arrow"}, blob, offered=["arrow"])
    cat = pa.table({"c": pa.array(["x", "y"] * 1000).dictionary_encode()})
    with pytest.raises(wire.WireError, match="dictionary is compressed"):
        wire.decode({"format": "arrow"}, ipc(cat, compression=codec), offered=["arrow"])


def test_plain_arrow_frames_still_decode():
    df = pd.DataFrame({"k": ["a", "b"], "v": [1.5, 2.5], "c": pd.Categorical(["x", "y"])})
    desc, blob = wire.encode(df, ["arrow"])
    pd.testing.assert_frame_equal(wire.decode(desc, bytearray(blob), offered=["arrow"]), df)
