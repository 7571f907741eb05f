"""Module-level functions the job tests send to nodes (by reference)."""
import time

import numpy as np


def pi_hits(seed, n=500_000):
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    return int(((xy ** 2).sum(axis=1) <= 1.0).sum())


def group_sums(df):
    return df.groupby("key").agg(total=("value", "sum"), n=("value", "size"))


def echo(x):
    return x


def checksum(a):
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def slow_square(x):
    time.sleep(0.3)
    return x * x


def fails(x):
    print("working on", x)
    return {"a": 1}["missing-%d" % x]


def kill_self():
    import os
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def versions():
    import sys

    import pandas
    return {"python": sys.version.split()[0], "numpy": np.__version__,
            "pandas": pandas.__version__}


def exit_with(code):
    import os
    os._exit(code)


def slow_echo(x, seconds):
    time.sleep(seconds)
    return x


def file_sha256(path):
    import hashlib
    import os
    h = hashlib.sha256()
    with open(os.path.expanduser(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def returns_set():
    return {1, 2, 3}


def sleep_forever(_=None):
    while True:
        time.sleep(1)


def span(seconds):
    """(pid, start, end) of a task that sleeps ``seconds``."""
    import os
    t0 = time.time()
    time.sleep(seconds)
    return [os.getpid(), t0, time.time()]


def ticker(n, pause=0.5):
    """Prints ``n`` lines with the time of each print, ``pause`` seconds apart."""
    for k in range(n):
        print("tick %d %.3f" % (k, time.time()), flush=True)
        time.sleep(pause)
    return n


def hang_recording(path):
    """Starts a child, writes 'own pid, child pid' to ``path`` and hangs."""
    import os
    import subprocess
    child = subprocess.Popen(["sleep", "600"])
    with open(path, "w") as f:
        f.write("%d %d" % (os.getpid(), child.pid))
    while True:
        time.sleep(1)
