from cloudcompute.jobs import environment


def test_missing_reports_absent_and_too_old():
    found = {"numpy": "1.24.2", "pandas": "2.2.0", "pyarrow": None}
    assert environment.missing(["numpy>=2", "pandas>=2", "pyarrow"], found) == [
        "numpy>=2: found 1.24.2", "pyarrow: not installed"]
    assert environment.missing(["numpy==1.24.2"], found) == []


def test_platform_tags_cover_glibc_manylinux():
    tags = environment._platforms("linux-x86_64")
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_36_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and tags[-1] == "linux_x86_64"


def test_client_requirements_pin_installed_versions():
    import numpy
    pins = environment.client_requirements(["numpy", "no-such-package-xyz"])
    assert pins == ["numpy==%s" % numpy.__version__]


def test_built_environments_carry_their_own_numpy_and_pandas():
    import numpy
    import pandas
    reqs = environment.with_core(["scipy==1.0"])
    assert reqs == ["scipy==1.0", "numpy==%s" % numpy.__version__,
                    "pandas==%s" % pandas.__version__]
    assert environment.with_core(["numpy<2"]) == ["numpy<2", "pandas==%s" % pandas.__version__]
