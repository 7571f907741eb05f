"""A hostile stand-in for the node's worker: it greets like the real one, then
answers the first task with forged frames. Stdlib only (it runs on a node).

    hostile_worker.py MODE [FRAME_FILE]

MODE: claim100g (announce a 100 GiB blob, send nothing), claim1g (announce
1 GiB, send 20 MiB, then go silent), frame (send the header and blob stored
in FRAME_FILE as the task's answer), endless (stream task output forever).
"""
import hashlib
import json
import struct
import sys
import time

HDR, LEN = struct.Struct("!I"), struct.Struct("!Q")
out = sys.stdout.buffer


def send_header(header):
    raw = json.dumps(header).encode()
    out.write(HDR.pack(len(raw)) + raw)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = sys.stdin.buffer.read(n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf


def read_task():
    (n,) = HDR.unpack(read_exact(HDR.size))
    header = json.loads(read_exact(n))
    for _ in header.get("blobs", []):
        (size,) = LEN.unpack(read_exact(LEN.size))
        read_exact(size)
    return header


def main():
    mode = sys.argv[1]
    send_header({"op": "hello", "versions": {"python": "3.11.2"}, "pid": 1, "slots": 1,
                 "beat": 2, "formats": ["json", "npy", "npcols", "arrow", "pickle"],
                 "blobs": []})
    out.flush()
    task = read_task()
    while task.get("op") != "task":
        if task.get("op") == "project":  # claim to hold the caller's project
            send_header({"op": "ready", "id": task["id"], "digest": task["digest"],
                         "blobs": []})
            out.flush()
        task = read_task()
    tid = task["id"]
    result = {"op": "result", "id": tid, "ok": True, "duration": 0.1, "peak_rss_kb": 1}
    if mode in ("claim100g", "claim1g"):
        size = (100 << 30) if mode == "claim100g" else (1 << 30)
        send_header(dict(result, result={"format": "npy", "blob": 0},
                         blobs=[{"size": size, "sha256": "0" * 64}]))
        out.write(LEN.pack(size))
        if mode == "claim1g":
            for _ in range(20):
                out.write(b"\0" * (1 << 20))
        out.flush()
        time.sleep(300)
    elif mode == "frame":
        with open(sys.argv[2], "rb") as f:
            spec = json.loads(f.readline())
            blob = f.read()
        send_header(dict(result, result=dict(spec, blob=0), blobs=[
            {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}]))
        out.write(LEN.pack(len(blob)) + blob)
        out.flush()
        time.sleep(300)
    elif mode == "endless":
        text = "x" * 60000 + "\n"
        while True:
            send_header({"op": "log", "id": tid, "text": text, "blobs": []})
            out.flush()


if __name__ == "__main__":
    main()
