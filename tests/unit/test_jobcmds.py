"""The job commands of the CLI against nodes that are local processes."""
import json
import sys

import pytest

from cloudcompute import cli
from cloudcompute.cli import jobcmds
from cloudcompute.jobs import detached
from cloudcompute.jobs.executor import Executor
from tests.unit.localnode import LocalNode, quick_jobs


class _Jobs:
    def __init__(self, ex):
        self.ex = ex

    def job(self, job_id, allow_pickle=False):
        job = detached.Job(self.ex, job_id, allow_pickle=allow_pickle)
        job.record  # noqa: B018 - as Jobs.job: an unknown id fails here
        return job

    def __call__(self):
        return detached.list_jobs(self.ex)


class _Cluster:
    """What the job commands use of an attached Cluster."""

    def __init__(self, ex):
        self.ex, self.jobs = ex, _Jobs(ex)

    def executor(self):
        return self.ex

    def close_connections(self):
        pass


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    quick_jobs(monkeypatch)
    nodes = {n: LocalNode(n, tmp_path / n) for n in ("n0", "n1")}
    ex = Executor(nodes, python={n: sys.executable for n in nodes},
                  slots={n: 1 for n in nodes},
                  silence=5.0)  # a loaded machine starts workers slowly
    monkeypatch.setattr(jobcmds, "attach", lambda args: _Cluster(ex))
    yield ex
    ex.close()
    for node in nodes.values():
        node.cleanup()


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_jobs_logs_results_cancel(cluster, capsys, tmp_path):
    for name, value in (("a", 1), ("b", 41)):
        (tmp_path / (name + ".json")).write_text(json.dumps(value))
    code, out, err = _run(capsys, "-f", "json", "submit", "c1", "tests/unit/nodefuncs.py:chatty",
                          str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert code == 0, err
    job_id = json.loads(out)["job"]
    code, out, err = _run(capsys, "-f", "json", "results", "c1", job_id,
                          "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert sorted(json.loads(out)["outputs"]) == [str(tmp_path / "out" / "a.json"),
                                                  str(tmp_path / "out" / "b.json")]
    assert json.loads((tmp_path / "out" / "b.json").read_text()) == 41
    code, out, _ = _run(capsys, "-f", "json", "jobs", "c1")
    (row,) = json.loads(out)["jobs"]
    assert row["job"] == job_id and row["counts"]["done"] == 2 and row["tasks"] == 2
    code, out, _ = _run(capsys, "logs", "c1", job_id)
    assert sorted(out.splitlines()) == ["[0] line 1", "[1] line 41"]
    code, out, _ = _run(capsys, "-f", "json", "logs", "c1", job_id, "--task", "1")
    assert json.loads(out)["lines"] == ["[1] line 41"]
    code, out, _ = _run(capsys, "-f", "json", "cancel", "c1", job_id)
    assert code == 0 and json.loads(out)["counts"]["done"] == 2


def test_a_failed_task_writes_the_others_and_exits_1(cluster, capsys, tmp_path):
    for name, value in (("a", 1), ("b", 3)):
        (tmp_path / (name + ".json")).write_text(json.dumps(value))
    code, out, err = _run(capsys, "submit", "c1", "tests/unit/nodefuncs.py:fail_on",
                          str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                          "-o", str(tmp_path / "out"))
    assert code == 1
    assert out.startswith("job ") and "KeyError" in out
    assert json.loads((tmp_path / "out" / "a.json").read_text()) == 10


def test_usage_errors_exit_2(cluster, capsys, tmp_path):
    code, _, err = _run(capsys, "logs", "c1", "n0", "-f")
    assert code == 2 and "-f and --task go with a job id" in err
    code, _, err = _run(capsys, "results", "c1", "../etc", "-o", str(tmp_path))
    assert code == 2 and "not a job id" in err
    (tmp_path / "x").mkdir()
    for d in ("x", "."):
        (tmp_path / d / "a.json").write_text("1")
    code, _, err = _run(capsys, "submit", "c1", "tests/unit/nodefuncs.py:add_one",
                        str(tmp_path / "a.json"), str(tmp_path / "x" / "a.json"))
    assert code == 2 and "share the name a" in err
    code, _, err = _run(capsys, "results", "c1", "20260101-000000-abcdef", "-o", str(tmp_path))
    assert code == 1 and "no job 20260101-000000-abcdef" in err
