"""The ops side of the command line: `list`/`gc` JSON and the old-clusters report
(examples/ops/old_clusters.py and the cron script around it), against a
stand-in cloud."""
import importlib.util
import io
import json
import os
import subprocess
import sys
import time

import pytest

from cloudcompute import cli, config, tags
from tests.unit.test_gc import HOUR, NOW, FakeCloud, no_sleep  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "ops", "old_clusters.py")


def load_report():
    spec = importlib.util.spec_from_file_location("old_clusters", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report()


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("CLOUDCOMPUTE_FORMAT", raising=False)
    fake = FakeCloud()
    monkeypatch.setattr(config, "connect", lambda *a, **k: fake)
    return fake


def list_json(capsys):
    assert cli.main(["-f", "json", "list"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_reports_when_each_cluster_was_created(cloud, capsys):
    # Two servers: the earlier cc_created counts, whatever the cloud's own times say.
    cloud.cluster("old-00000001", servers=2)
    cloud.servers.items["old-00000001-s1"].metadata[tags.META_CREATED] = "%d" % (NOW - 30 * HOUR)
    cloud.cluster("young-00000002", servers=1)
    clusters = {c["cluster_id"]: c for c in list_json(capsys)["clusters"]}
    assert clusters["old-00000001"]["created"] == NOW - 30 * HOUR
    assert clusters["young-00000002"]["created"] == NOW - HOUR
    assert {"cluster_id", "name", "resources", "created", "oldest", "expires_at", "owner",
            "detached", "state_file", "orphan_reason", "problems"} <= set(clusters["old-00000001"])


def test_report_of_list_json_names_the_old_clusters_oldest_first(cloud, capsys, monkeypatch):
    cloud.cluster("old-00000001", servers=1, **{tags.META_CREATED: "%d" % (NOW - 30 * HOUR)})
    cloud.cluster("older-00000003", servers=1, **{tags.META_CREATED: "%d" % (NOW - 50 * HOUR),
                                                  tags.META_DETACHED: "1"})
    cloud.cluster("young-00000002", servers=1)
    listing = json.dumps(list_json(capsys))
    monkeypatch.setattr(sys, "stdin", io.StringIO(listing))
    assert report.main(["--hours", "24", "--now", str(NOW)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" ", 1)[0] for ln in lines] == ["older-00000003", "old-00000001"]
    assert lines[0].startswith("older-00000003 (older): 50.0 h old, created ")
    assert "detached" in lines[0] and lines[1].endswith("3 resources, gc: no")
    monkeypatch.setattr(sys, "stdin", io.StringIO(listing))
    assert report.main(["--hours", "60", "--now", str(NOW)]) == 0
    assert capsys.readouterr().out == ""


def test_report_falls_back_to_the_clouds_time_and_skips_clusters_without_one():
    listing = {"clusters": [
        {"cluster_id": "a-1", "name": "a", "oldest": NOW - 5 * HOUR, "created": None},
        {"cluster_id": "b-2", "name": "b", "created": None, "oldest": None},
        {"cluster_id": "c-3", "name": None, "created": NOW - 2 * HOUR,
         "problems": ["cc_expires 'x' is not a time\nin seconds"]},
    ]}
    lines = [ln for ln, _ in report.old_clusters(listing, 1, NOW)]
    assert lines[0].startswith("a-1 (a): 5.0 h old") and lines[0].endswith("gc: no")
    assert lines[1] == ("c-3 (?): 2.0 h old, created %s, 0 resources, gc skips it: "
                        "cc_expires 'x' is not a time in seconds"
                        % report.time.strftime("%Y-%m-%d %H:%M UTC",
                                               report.time.gmtime(NOW - 2 * HOUR)))
    assert len(lines) == 2


@pytest.mark.parametrize("text", ["not json", "[]", '{"clusters": [{"name": "x"}]}',
                                  '{"dry_run": true}'])
def test_report_of_input_that_is_not_a_listing_exits_2(text, tmp_path):
    f = tmp_path / "listing.json"
    f.write_text(text)
    r = subprocess.run([sys.executable, SCRIPT, "--hours", "1", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("old_clusters: error: ")


def test_gc_json_report_and_exit_1_when_a_deletion_fails(cloud, capsys, monkeypatch):
    from cloudcompute import gc
    cloud.cluster("gone-00000001", servers=1, **{tags.META_EXPIRES: "%d" % (NOW - HOUR)})
    assert cli.main(["gc", "-f", "json"]) == 0  # a dry run
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] is True and [c["cluster_id"] for c in doc["clusters"]] == [
        "gone-00000001"]
    assert doc["clusters"][0]["deleted"] is False and doc["clusters"][0]["reason"]

    def fail(conn, outcome, state_dir, timeout):
        outcome.error = "server cc-gone-00000001-node-0 still there"
    monkeypatch.setattr(gc, "_delete", fail)
    assert cli.main(["gc", "--yes", "-f", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] is False and doc["clusters"][0]["error"].startswith("server")


def test_gc_table_says_what_happened_to_each_cluster(cloud, capsys, monkeypatch):
    from cloudcompute import gc
    for cid in ("done-00000001", "fail-00000002", "late-00000003"):
        cloud.cluster(cid, servers=1, **{tags.META_EXPIRES: "%d" % (NOW - HOUR)})
    cloud.cluster("bad-00000004", servers=1, **{tags.META_EXPIRES: "soon"})

    def delete(conn, outcome, state_dir, timeout):
        cid = outcome.found.cluster_id
        if cid.startswith("done"):
            outcome.deleted = True
        elif cid.startswith("fail"):
            outcome.error = "server x still there"
        else:
            outcome.skipped = "no longer collectable"
    monkeypatch.setattr(gc, "_delete", delete)
    assert cli.main(["-f", "table", "gc", "--yes"]) == 1
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["done-00000001"].endswith(" deleted")
    assert rows["fail-00000002"].endswith(" FAILED: server x still there")
    assert rows["late-00000003"].endswith(" skipped: no longer collectable")
    assert "skipped: server cc-bad-00000004-node-0" in rows["bad-00000004"]
    assert cli.main(["-f", "table", "gc"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["done-00000001"].endswith(" would delete")


def test_ops_files_name_the_command_the_readme_documents():
    ops = os.path.join(ROOT, "examples", "ops")
    service = open(os.path.join(ops, "cloudcompute-gc.service")).read()
    cron = open(os.path.join(ops, "cloudcompute-gc.cron")).read()
    for text in (service, cron):
        line = next(ln for ln in text.splitlines() if "bin/cloudcompute gc" in ln)
        argv = line.split("bin/cloudcompute ", 1)[1].split()
        from cloudcompute.cli import parser as cliparser
        p = cliparser.build()
        args = p.parse_args(argv)
        cliparser.apply_env(p, args, {})
        assert (args.command, args.yes, args.format) == ("gc", True, "json")
    assert "StandardOutput=journal" in service and "SyslogIdentifier=cloudcompute-gc" in service
    timer = open(os.path.join(ops, "cloudcompute-gc.timer")).read()
    assert "OnCalendar=" in timer and "Persistent=true" in timer


def test_list_and_gc_example_counts_what_it_deleted_and_exits_1_on_a_failure(
        cloud, capsys, monkeypatch):
    from cloudcompute import gc
    spec = importlib.util.spec_from_file_location(
        "list_and_gc", os.path.join(ROOT, "examples", "ops", "list_and_gc.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(example, "connect", lambda cloud_name=None: cloud)
    cloud.cluster("gone-00000001", servers=1, **{tags.META_EXPIRES: "%d" % (NOW - HOUR)})
    cloud.cluster("gone-00000002", servers=1, **{tags.META_EXPIRES: "%d" % (NOW - HOUR)})
    monkeypatch.setattr(sys, "argv", ["list_and_gc.py"])
    assert example.main() == 0
    assert capsys.readouterr().out.splitlines()[-1] == "gc would delete 2 cluster(s)"

    def fail_one(conn, outcome, state_dir, timeout):
        if outcome.found.cluster_id.endswith("1"):
            outcome.error = "server cc-gone-00000001-node-0 still there"
        else:
            outcome.deleted = True
    monkeypatch.setattr(gc, "_delete", fail_one)
    monkeypatch.setattr(sys, "argv", ["list_and_gc.py", "--yes"])
    assert example.main() == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["gc deleted 1 cluster(s)",
                        "gc failed on gone-00000001: server cc-gone-00000001-node-0 still there"]


STUB = """#!/bin/sh
# Stands in for the cloudcompute command: records its arguments, then prints
# the listing in $STUB_LISTING, or fails as a command that cannot list does.
printf '%s\\n' "$*" >> "$STUB_CALLS"
if [ -n "${STUB_FAIL:-}" ]; then
    echo "cloudcompute: error: cloud 'x' not found in clouds.yaml" >&2
    exit 2
fi
cat "$STUB_LISTING"
"""


def run_old_clusters_script(tmp_path, clusters, *argv, fail=False):
    """examples/ops/cloudcompute-old-clusters.sh with a stand-in `cloudcompute`
    first on PATH; the listing holds ``clusters`` (or is the text given)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "cloudcompute"
    stub.write_text(STUB)
    stub.chmod(0o755)
    if not (bin_dir / "python3").exists():
        (bin_dir / "python3").symlink_to(sys.executable)
    listing = tmp_path / "listing.json"
    listing.write_text(clusters if isinstance(clusters, str) else json.dumps(
        {"clusters": clusters}))
    env = dict(os.environ, PATH=str(bin_dir) + os.pathsep + os.environ.get("PATH", ""),
               STUB_LISTING=str(listing), STUB_CALLS=str(tmp_path / "calls"))
    env.pop("STUB_FAIL", None)
    if fail:
        env["STUB_FAIL"] = "1"
    r = subprocess.run([os.path.join(ROOT, "examples", "ops", "cloudcompute-old-clusters.sh"),
                        *argv], env=env, capture_output=True, text=True, timeout=30,
                       cwd=str(tmp_path))
    assert (tmp_path / "calls").read_text() == "-f json list\n"  # asked once, for JSON
    (tmp_path / "calls").unlink()
    return r


def listed(cluster_id, hours_old, **extra):
    return dict({"cluster_id": cluster_id, "name": cluster_id.split("-")[0],
                 "created": time.time() - hours_old * 3600, "oldest": None,
                 "resources": ["server cc-%s-node-0" % cluster_id], "detached": False,
                 "problems": [], "orphan_reason": None}, **extra)


def test_old_clusters_script_reports_old_clusters_and_exits_1(tmp_path):
    old = listed("old-00000001", 48, detached=True)
    r = run_old_clusters_script(tmp_path, [listed("young-00000002", 1), old])
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(old["created"]))
    assert (r.returncode, r.stderr) == (1, "")
    assert r.stdout.splitlines() == [
        "old-00000001 (old): 48.0 h old, created %s, 1 resources, detached, gc: no" % created]
    # HOURS, the first argument, replaces the default of 24.
    r = run_old_clusters_script(tmp_path, [listed("young-00000002", 1), old], "72")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run_old_clusters_script(tmp_path, [listed("young-00000002", 1), old], "0.5")
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 2


def test_old_clusters_script_is_silent_and_exits_0_when_none_is_old(tmp_path):
    r = run_old_clusters_script(tmp_path, [listed("young-00000002", 23)])
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run_old_clusters_script(tmp_path, [])
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_old_clusters_script_exits_3_when_the_listing_fails(tmp_path):
    r = run_old_clusters_script(tmp_path, [listed("old-00000001", 48)], fail=True)
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr == "cloudcompute: error: cloud 'x' not found in clouds.yaml\n"
    # A listing that is not list's JSON is the report's exit 2.
    r = run_old_clusters_script(tmp_path, "not json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("old_clusters: error: -: ")
