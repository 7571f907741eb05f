"""Functions the benchmarks run on nodes (sent by reference)."""


def nbytes(a):
    return int(a.nbytes)


def make(mib):
    import numpy as np
    return np.ones(mib * 1024 * 1024 // 8)


def noop(x):
    return x


def spin(n):
    """Pure-Python CPU work: one core for as long as ``n`` iterations take."""
    s = 0
    for i in range(n):
        s += i * i
    return s
