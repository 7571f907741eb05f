"""The stock image (Debian numpy 1.24 / pandas 1.5, no pyarrow, no internet)
gets the client's environment through shipped wheels."""
import time

import numpy as np
import pandas as pd
import pytest

from cloudcompute import Cluster, ClusterSpec
from cloudcompute.exceptions import EnvironmentMismatch
from tests.functional import jobfuncs as jf
from tests.functional.conftest import CLOUD


def test_prepare_ships_wheels_and_enables_pickle_and_arrow(unique, state_dir, tmp_path):
    with Cluster(ClusterSpec(name=unique, nodes=2), cloud=CLOUD) as c:
        # the stock node cannot take a function by value
        with pytest.raises(EnvironmentMismatch, match="prepare\\(match_client=True\\)"):
            c.map(lambda x: x + 1, [1], allow_pickle=True)
        assert c.run(jf.versions)["numpy"].startswith("1.")
        t0 = time.monotonic()
        pythons = c.prepare(match_client=True)
        first = time.monotonic() - t0
        assert set(pythons) == set(c.node_names())
        assert all(p.startswith(".cloudcompute/env-") for p in pythons.values())
        remote = c.run(jf.versions)
        assert remote["numpy"] == np.__version__ and remote["pandas"] == pd.__version__
        offset = 10
        assert c.map(lambda x: x + offset, [1, 2, 3], allow_pickle=True) == [11, 12, 13]
        df = pd.DataFrame({"k": ["a", "b"], "v": [1.0, 2.0]})
        assert c.executor().worker(c.node_names()[0]).hello["formats"][0] == "arrow"
        pd.testing.assert_frame_equal(c.run(jf.echo, df), df)
        # a second prepare finds the environment complete and skips the work
        t0 = time.monotonic()
        assert c.prepare(match_client=True) == pythons
        again = time.monotonic() - t0
        assert again < first / 3, (first, again)
