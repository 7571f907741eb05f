"""Splitting arrays and DataFrames into row blocks, and putting them back."""
from __future__ import annotations

from typing import Any, List


def split(data: Any, parts: int) -> List[Any]:
    """``parts`` contiguous row blocks of an array or DataFrame (fewer if it is short)."""
    import numpy as np
    import pandas as pd
    if parts < 1:
        raise ValueError("partitions must be >= 1, got %r" % parts)
    n = len(data)
    bounds = np.linspace(0, n, min(parts, max(n, 1)) + 1).astype(int)
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    if isinstance(data, (pd.DataFrame, pd.Series)):
        return [data.iloc[a:b] for a, b in spans]
    if isinstance(data, np.ndarray):
        return [data[a:b] for a, b in spans]
    raise TypeError("map_partitions takes a NumPy array or a pandas DataFrame/Series, "
                    "not %s" % type(data).__name__)


def concat(results: List[Any]) -> Any:
    """Concatenate per-partition results in order (arrays, frames, or a plain list)."""
    import numpy as np
    import pandas as pd
    if results and all(isinstance(r, (pd.DataFrame, pd.Series)) for r in results):
        return pd.concat(results)
    if results and all(isinstance(r, np.ndarray) for r in results):
        return np.concatenate(results)
    return results
