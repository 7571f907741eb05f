"""Every message on the worker channel, both directions, in one place.

The client talks to one warm worker per node over one SSH channel
(:mod:`cloudcompute.jobs.worker`). Each message is a frame
(:mod:`cloudcompute.jobs.wire`): a JSON header with an ``op`` and the
fields below, then the blobs the header lists. Requests carry an ``id``;
every answer names the ``id`` it answers, so many requests can be in flight
and answers arrive in any order.

=============  =====  =====================================================  ===========
op             from   fields                                                 answer
=============  =====  =====================================================  ===========
``hello``      node   versions, formats, pid, slots, beat                    --
``task``       client id, fn, args, kwargs, allow_pickle, result_formats,    ``result``
                      timeout, project, staged, stage_over, stage_dir
``cancel``     client id (of the task to end; its ``result`` answers)        --
``project``    client id, digest, files (relative path -> sha256)            ``need`` or
                                                                             ``ready``
``objects``    client id, digest, shas (one blob each)                       ``ready``
``exit``       client --                                                     --
``result``     node   id, ok, duration, peak_rss_kb; when ok: result,        --
                      staged; else exc_type, message, traceback, or
                      killed (signal), timed_out (seconds), cancelled
``need``       node   id, missing (sha256 of files the node lacks)           --
``ready``      node   id, digest                                             --
``log``        node   id, text (a task's stdout/stderr, in order)            --
``beat``       node   -- (sent after ``beat`` seconds without other output)  --
``wire_error`` node   id (when known), message                               --
=============  =====  =====================================================  ===========

Value descriptors (``args``, ``kwargs``, ``result``) name a ``format``
(``json``, ``npy``, ``npcols``, ``arrow``, ``pickle``) and the index of
their ``blob``. A blob over ``stage_over`` bytes travels as a file instead
(``staged``: index -> path, sha256, size). A task runs in one of the
node's ``slots`` task processes; ``timeout`` kills it there.

Stdlib only: the node imports this module too.
"""
from typing import Any, Dict, List, TypedDict

HELLO = "hello"
TASK = "task"
CANCEL = "cancel"
PROJECT = "project"
OBJECTS = "objects"
EXIT = "exit"
RESULT = "result"
NEED = "need"
READY = "ready"
LOG = "log"
BEAT = "beat"
WIRE_ERROR = "wire_error"

CLIENT_OPS = (TASK, CANCEL, PROJECT, OBJECTS, EXIT)
NODE_OPS = (HELLO, RESULT, NEED, READY, LOG, BEAT, WIRE_ERROR)

NODE_DIR = ".cloudcompute"
"""Everything cloudcompute keeps on a node lives here, relative to the login
user's home (where SSH commands start): the shipped worker, the project
store, staged blobs, environments, intra-cluster SSH files, Dask's files."""

BEAT_SECONDS = 2.0
"""The node sends a ``beat`` after this long without sending anything else."""


class ValueDesc(TypedDict, total=False):
    format: str
    blob: int
    series: bool
    columns: List[Dict[str, Any]]
    index: Dict[str, Any]


class FnSpec(TypedDict, total=False):
    kind: str  # "ref" (module source + qualified name) or "pickle"
    module: str
    package: str
    filename: str
    qualname: str
    sha256: str
    blob: int


class Staged(TypedDict):
    path: str
    sha256: str
    size: int


class Hello(TypedDict):
    op: str
    versions: Dict[str, Any]
    formats: List[str]
    pid: int
    slots: int
    beat: float


class Task(TypedDict, total=False):
    op: str
    id: str
    fn: FnSpec
    args: List[ValueDesc]
    kwargs: Dict[str, ValueDesc]
    allow_pickle: bool
    result_formats: List[str]
    timeout: float
    project: str
    staged: Dict[str, Staged]
    stage_over: int
    stage_dir: str


class Result(TypedDict, total=False):
    op: str
    id: str
    ok: bool
    result: ValueDesc
    staged: Dict[str, Staged]
    duration: float
    peak_rss_kb: int
    exc_type: str
    message: str
    traceback: str
    killed: int
    timed_out: float
    cancelled: bool


class Project(TypedDict):
    op: str
    id: str
    digest: str
    files: Dict[str, str]


class Need(TypedDict):
    op: str
    id: str
    missing: List[str]


class Objects(TypedDict):
    op: str
    id: str
    digest: str
    shas: List[str]


class Log(TypedDict):
    op: str
    id: str
    text: str
