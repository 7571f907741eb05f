"""Functions the Dask tests send to the workers. The tests import this file as the
top-level module ``daskfuncs`` and ``client.upload_file`` it, so that the
scheduler and the workers import it by the same name."""
import socket
import time


def square(x):
    return x * x


def slow_square(x):
    time.sleep(0.2)
    return x * x


def hostname():
    return socket.gethostname()
