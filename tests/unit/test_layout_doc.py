"""The README's "How the code is laid out" names every module of the package."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def layout_section():
    readme = open(os.path.join(ROOT, "README.md")).read()
    start = readme.index("## How the code is laid out")
    return readme[start:readme.index("\n## ", start + 1)]


def unnamed(section, package_dir):
    """The modules under ``package_dir`` that ``section`` does not name: by
    their path (`provision/servers.py`, `cloudcompute/cluster.py`), or by
    their name in the bullet of their package: `- `cli/`: ... `spec.py` ...`,
    or an item of a list in parentheses, `- `nodeside/`: ... (put, get)`."""
    bullets = {m.group(1): m.group(0) for m in re.finditer(
        r"^- `([a-z_]+)/`.*?(?=^- |\Z)", section, re.M | re.S)}
    missing = []
    for folder, _, files in os.walk(package_dir):
        for f in files:
            if not f.endswith(".py") or f == "__init__.py":
                continue
            rel = os.path.relpath(os.path.join(folder, f), package_dir).replace(os.sep, "/")
            if "`%s`" % rel in section or "`cloudcompute/%s`" % rel in section:
                continue
            package, _, name = rel.rpartition("/")
            bullet = bullets.get(package.split("/")[0], "") if package else ""
            stem = re.escape(name[:-3])
            if not re.search(r"`%s\.py`|[(,]\s*%s\s*[,)]" % (stem, stem), bullet):
                missing.append(rel)
    return sorted(missing)


def test_the_layout_names_every_module():
    assert unnamed(layout_section(), os.path.join(ROOT, "cloudcompute")) == []


def test_the_layout_check_finds_a_module_left_out(tmp_path):
    for rel in ("config.py", "cli/common.py", "cli/spec.py", "provision/changes.py",
                "provision/servers.py", "nodeside/probe.py", "nodeside/put.py"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("")
    section = ("- `config.py`: the spec.\n- `provision/servers.py`: creates them.\n"
               "- `nodeside/`: the programs the nodes run (put, get).\n"
               "- `cli/`: the command: `spec.py`, and the common rest.\n")
    assert unnamed(section, str(tmp_path)) == [
        "cli/common.py", "nodeside/probe.py", "provision/changes.py"]
