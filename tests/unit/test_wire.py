"""The wire format and codecs shared by client and worker."""
import io

import numpy as np
import pandas as pd
import pytest

from cloudcompute.exceptions import EnvironmentMismatch, SerializationError
from cloudcompute.jobs import payload, taskproc, wire, worker
from cloudcompute.jobs.partition import concat, split

ALL = ["arrow", "json", "npy", "npcols", "pickle"]


def roundtrip(value, formats=ALL, allow_pickle=False):
    desc, blob = wire.encode(value, formats, allow_pickle)
    buf = io.BytesIO()
    wire.write_frame(buf, {"op": "x", "d": desc}, [blob])
    header, blobs = wire.read_frame(io.BytesIO(buf.getvalue()))
    return header["d"]["format"], wire.decode(header["d"], blobs[0], allow_pickle)


def test_array_goes_as_npy():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    fmt, b = roundtrip(a)
    assert fmt == "npy" and b.dtype == np.float32 and np.array_equal(a, b)


@pytest.mark.parametrize("formats,expected", [(ALL, "arrow"), (["json", "npy", "npcols"],
                                                                "npcols")])
def test_dataframe_formats_preserve_values(formats, expected):
    df = pd.DataFrame({"k": ["a", "b", "a"], "v": [1.5, 2.5, np.nan],
                       "c": pd.Categorical(["x", "y", "x"]), "i": [1, 2, 3]},
                      index=pd.Index(["r1", "r2", "r3"], name="row"))
    fmt, back = roundtrip(df, formats)
    assert fmt == expected
    pd.testing.assert_frame_equal(back, df, check_categorical=True)


def test_range_index_and_series():
    df = pd.DataFrame({"v": np.arange(5.0)}, index=pd.RangeIndex(10, 15))
    assert roundtrip(df, ["npcols"])[1].index.equals(df.index)
    s = pd.Series([1.0, 2.0], name="x")
    pd.testing.assert_series_equal(roundtrip(s, ["npcols", "json"])[1], s)


def test_json_values_and_pickle_only_on_opt_in():
    assert roundtrip({"a": [1, 2.5, None]}) == ("json", {"a": [1, 2.5, None]})
    with pytest.raises(TypeError, match="allow_pickle=True"):
        wire.encode({1, 2}, ALL)
    desc, blob = wire.encode({1, 2}, ALL, allow_pickle=True)
    assert desc["format"] == "pickle"
    with pytest.raises(wire.WireError, match="refusing to unpickle"):
        wire.decode(desc, blob, allow_pickle=False)
    assert wire.decode(desc, blob, allow_pickle=True) == {1, 2}


def test_object_arrays_are_not_npy_and_mixed_columns_need_pickle():
    with pytest.raises(TypeError):
        wire.encode(np.array([object(), 1], dtype=object), ["npy"])
    with pytest.raises(TypeError, match="mixed"):
        wire.encode(pd.DataFrame({"m": [1, "a"]}), ["npcols"])


def test_corrupted_blob_is_detected():
    buf = io.BytesIO()
    wire.write_frame(buf, {"op": "x"}, [b"hello world"])
    raw = bytearray(buf.getvalue())
    raw[-1] ^= 0xFF
    with pytest.raises(wire.WireError, match="sha256 mismatch"):
        wire.read_frame(io.BytesIO(bytes(raw)))
    with pytest.raises(EOFError):
        wire.read_frame(io.BytesIO(buf.getvalue()[:-3]))


def module_level(x):
    return x + 1


def test_functions_by_reference_or_refused():
    blobs = payload.Blobs()
    spec = payload.function_spec(module_level, blobs, allow_pickle=False)
    assert spec["kind"] == "ref" and spec["qualname"] == "module_level"
    assert b"def module_level" in blobs.items[spec["blob"]]
    with pytest.raises(SerializationError, match="allow_pickle=True"):
        payload.function_spec(lambda x: x, payload.Blobs(), allow_pickle=False)
    with pytest.raises(SerializationError, match="not callable"):
        payload.function_spec(42, payload.Blobs(), allow_pickle=False)


def test_pickle_needs_a_compatible_node():
    local = wire.versions()
    node = dict(local, python="3.9.2", cloudpickle=None, numpy="1.24.2")
    with pytest.raises(EnvironmentMismatch) as err:
        payload.check_pickle_compatible("n1", node)
    text = str(err.value)
    assert "Python %s here, 3.9.2 on the node" % local["python"] in text
    assert "cloudpickle" in text
    payload.check_pickle_compatible("n1", dict(local, cloudpickle="3.0"))


def test_worker_runs_a_task_in_a_child(capfd):
    blobs = payload.Blobs()
    fn = payload.function_spec(module_level, blobs, allow_pickle=False)
    args, kwargs = payload.encode_args([41], {}, blobs, ALL, False)
    req = {"id": "t1", "fn": fn, "args": args, "kwargs": kwargs, "result_formats": ALL}
    header, rblobs, _ = worker.run_here(req, blobs.items)
    assert header["ok"] and wire.decode(header["result"], rblobs[0]) == 42
    assert header["peak_rss_kb"] > 0


def crash(_):
    import os
    import signal
    print("going down")
    os.kill(os.getpid(), signal.SIGKILL)


def raises(_):
    raise KeyError("missing")


@pytest.mark.parametrize("fn,check", [
    (crash, lambda h, logs: h["killed"] == 9 and "going down" in logs),
    (raises, lambda h, logs: h["exc_type"] == "KeyError" and "raise KeyError" in h["traceback"]),
])
def test_worker_reports_failures(fn, check):
    blobs = payload.Blobs()
    spec = payload.function_spec(fn, blobs, allow_pickle=False)
    args, _ = payload.encode_args([1], {}, blobs, ALL, False)
    header, _, logs = worker.run_here({"id": "t", "fn": spec, "args": args, "kwargs": {},
                                       "result_formats": ALL}, blobs.items)
    assert not header["ok"] and check(header, logs)


def test_split_and_concat_keep_order():
    df = pd.DataFrame({"v": np.arange(10)})
    parts = split(df, 3)
    assert [len(p) for p in parts] == [3, 3, 4]
    pd.testing.assert_frame_equal(concat(parts), df)
    a = np.arange(5)
    assert len(split(a, 10)) == 5
    assert np.array_equal(concat(split(a, 2)), a)
    with pytest.raises(TypeError, match="NumPy array or a pandas"):
        split([1, 2, 3], 2)


def test_staged_blobs_are_read_checked_and_removed(tmp_path):
    import hashlib
    data = b"x" * 1000
    path = tmp_path / "arg"
    path.write_bytes(data)
    blobs = [b"", b"keep"]
    req = {"staged": {"0": {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                            "size": 1000}}}
    taskproc.unstage(req, blobs)
    assert blobs == [bytearray(data), b"keep"] and not path.exists()
    assert isinstance(blobs[0], bytearray)  # so that .npy arguments load without a copy
    path.write_bytes(b"truncated")
    with pytest.raises(wire.WireError, match="9 bytes, expected 1000"):
        taskproc.unstage(req, blobs)
    with pytest.raises(wire.WireError, match="No such file"):
        taskproc.unstage(req, blobs)


def test_large_results_are_left_in_a_file(tmp_path):
    import hashlib
    st = taskproc.stage_blob({"stage_over": 10, "stage_dir": str(tmp_path)}, b"y" * 11)["0"]
    assert open(st["path"], "rb").read() == b"y" * 11 and st["size"] == 11
    assert st["sha256"] == hashlib.sha256(b"y" * 11).hexdigest()
    assert taskproc.stage_blob({"stage_over": 10}, b"small") is None
    assert taskproc.stage_blob({}, b"z" * 100) is None


def test_worker_process_end_to_end(tmp_path):
    """The shipped node package, as a local process, speaking frames over its pipes."""
    import subprocess
    import sys

    from cloudcompute.jobs import channel
    pkg = tmp_path / "pkg" / channel.NODE_PACKAGE
    pkg.mkdir(parents=True)
    for name, source in channel.SOURCES.items():
        (pkg / name).write_bytes(source)
    proc = subprocess.Popen([sys.executable, "-u", "-c", channel.LAUNCH, str(tmp_path / "pkg"),
                             "--slots", "3", "--beat", "0.05"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=str(tmp_path),
                            env=dict(__import__("os").environ, HOME=str(tmp_path)))
    try:
        hello, _ = wire.read_frame(proc.stdout)
        assert hello["op"] == "hello" and "npy" in hello["formats"] and hello["slots"] == 3
        blobs = payload.Blobs()
        from tests.unit.nodefuncs import add_one  # its module imports next to nothing
        fn = payload.function_spec(add_one, blobs, allow_pickle=False)
        args, kwargs = payload.encode_args([np.arange(3)], {}, blobs, ALL, False)
        req = {"op": "task", "id": "t1", "fn": fn, "args": args, "kwargs": kwargs,
               "result_formats": ALL, "stage_over": 10, "stage_dir": str(tmp_path / "s")}
        wire.write_frame(proc.stdin, req, blobs.items)
        proc.stdin.flush()
        header, rblobs = wire.read_frame(proc.stdout)
        while header["op"] == "beat":
            header, rblobs = wire.read_frame(proc.stdout)
        assert header["ok"] and header["id"] == "t1"
        st = header["staged"]["0"]
        data = open(st["path"], "rb").read()
        assert np.array_equal(wire.decode(header["result"], data), np.arange(3) + 1)
        assert wire.read_frame(proc.stdout)[0] == {"op": "beat", "blobs": []}  # idle
        wire.write_frame(proc.stdin, {"op": "nonsense", "id": "x"})
        proc.stdin.flush()
        answer = wire.read_frame(proc.stdout)[0]
        while answer["op"] == "beat":
            answer = wire.read_frame(proc.stdout)[0]
        assert answer["op"] == "wire_error" and answer["id"] == "x"
        wire.write_frame(proc.stdin, {"op": "exit"})
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_driving_code_is_inert_on_a_node():
    """Module-level use of cloudcompute in a shipped module does nothing on a node."""
    finder = taskproc.ClientOnlyFinder()
    spec = finder.find_spec("cloudcompute.config")
    mod = finder.create_module(spec)
    s = mod.ClusterSpec(name="x", nodes=2)
    with mod.Cluster(s) as c:
        assert list(c.map(len, [1])) == []
    assert "client-side" in repr(c) and finder.find_spec("numpy") is None
    assert finder.find_spec("cloudcompute_extra") is None  # only the package itself


def test_load_npy_uses_a_bytearray_without_copy_and_never_unpickles():
    import io

    import numpy as np
    import pytest

    from cloudcompute.jobs.wire import load_npy
    for a in (np.arange(12.0).reshape(3, 4), np.asfortranarray(np.arange(12).reshape(3, 4)),
              np.zeros((2, 0)), np.array(5), np.array(["ab", "c"])):
        buf = io.BytesIO()
        np.save(buf, a)
        raw = bytearray(buf.getvalue())
        got = load_npy(raw)
        assert np.array_equal(got, a) and got.dtype == a.dtype and got.flags.writeable
        assert load_npy(bytes(raw)).shape == a.shape
    buf = io.BytesIO()
    np.save(buf, np.arange(4.0))
    raw = bytearray(buf.getvalue())
    load_npy(raw)[0] = 42.0  # the array is the buffer's memory
    assert np.frombuffer(raw, dtype="<f8", count=1, offset=len(raw) - 32)[0] == 42.0
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npy(bytearray(buf.getvalue()))


def test_module_source_travels_once_per_worker(tmp_path):
    """Later tasks name the module by hash; a process that never got it says so."""
    first, second = payload.Blobs(), payload.Blobs()
    spec1 = payload.function_spec(module_level, first, allow_pickle=False)
    spec2 = payload.function_spec(module_level, second, allow_pickle=False,
                                  sent={spec1["sha256"]})
    assert "blob" in spec1 and "blob" not in spec2 and second.items == []
    taskproc._CODE.clear()

    def task(spec, blobs):
        args, kwargs = payload.encode_args([1], {}, blobs, ALL, False)
        return {"id": "t", "fn": spec, "args": args, "kwargs": kwargs,
                "result_formats": ALL}, blobs.items
    header, _, _ = worker.run_here(*task(spec2, payload.Blobs()))
    assert not header["ok"] and "never sent" in header["message"]
    taskproc.remember_module({"fn": spec1}, first.items)  # as the worker does on arrival
    for spec, blobs in ((spec1, first), (spec2, payload.Blobs())):
        header, rblobs, _ = worker.run_here(*task(spec, blobs))
        assert header["ok"] and wire.decode(header["result"], rblobs[0]) == 2


def test_encoding_a_plain_value_imports_no_numpy_pandas_or_pyarrow(tmp_path):
    """A task that returns JSON does not pay for importing numpy and pandas (a
    supervisor that warmed nothing forks such tasks)."""
    import subprocess
    import sys

    from cloudcompute.jobs import channel
    pkg = tmp_path / channel.NODE_PACKAGE
    pkg.mkdir()
    for name, source in channel.SOURCES.items():
        (pkg / name).write_bytes(source)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from ccnode import wire; "
            "desc, blob = wire.encode({'a': [1, 2]}, %r); " % ALL +
            "print(desc['format'], bytes(blob).decode(), "
            "sorted(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split(None, 1) == ["json", '{"a": [1, 2]} []\n'], out.stderr


def test_an_array_or_frame_is_still_recognised_once_its_module_is_imported():
    assert wire.encode(np.arange(3), ALL)[0] == {"format": "npy"}
    assert wire.encode(pd.DataFrame({"a": [1]}), ["npcols", "json"])[0]["format"] == "npcols"
    assert wire.encode(pd.Series([1.0], name="s"), ["npcols"])[0]["series"] is True
