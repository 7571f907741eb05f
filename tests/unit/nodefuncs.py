"""Task functions for the unit tests that run the real worker locally."""
import os
import subprocess
import time


def add_one(x):
    return x + 1


def span(seconds):
    """(pid, start, end) of a task that sleeps ``seconds``."""
    t0 = time.time()
    time.sleep(seconds)
    return [os.getpid(), t0, time.time()]


def sleep_forever(pidfile):
    """Starts a child that would outlive the task, records its pid, then hangs."""
    child = subprocess.Popen(["sleep", "600"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    while True:
        time.sleep(1)


def fail_on(x, bad=3):
    if x == bad:
        raise KeyError("bad item %d" % x)
    time.sleep(0.05)
    return x * 10


def crash(_):
    import signal
    print("going down", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def chatty(n):
    print("line", n, flush=True)
    return n


def ticker(n, pause=0.3):
    """Prints ``n`` timestamped lines, ``pause`` seconds apart; returns their times."""
    times = []
    for k in range(n):
        times.append(time.time())
        print("tick %d %.3f" % (k, times[-1]), flush=True)
        time.sleep(pause)
    return times


def square_slowly(x, pause=0.05):
    time.sleep(pause)
    return x * x


def as_set(values):
    return set(values)


def slow_first_time(marker):
    """Hangs (60 s) the first time, writing its pid to ``marker``; then returns it."""
    if os.path.exists(marker):
        return int(open(marker).read())
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    return 0
