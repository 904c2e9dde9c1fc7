"""Runnable example of docs/scaling-out.md (tests/test_docs_examples.py runs this file).

Synthetic logits as a chunked dask array; the fit, the lazy probabilities and the metrics
never gather the array (dask's default scheduler, or a distributed Client when one is active).
"""

import dask.array as da
import numpy as np

from precal import TemperatureScaling
from precal.metrics import expected_calibration_error, negative_log_likelihood

rng = np.random.default_rng(0)
y = rng.integers(0, 10, size=200_000)
logits = 4.0 * (rng.normal(size=(200_000, 10)) + 1.5 * np.eye(10)[y])  # over-confident
X = da.from_array(logits.astype(np.float32), chunks=(25_000, 10))  # any dask array: zarr, HDF5, map_blocks
labels = da.from_array(y, chunks=50_000)  # chunked differently: rechunked to X's rows

ts = TemperatureScaling().fit(X, labels)  # one dask computation per Newton pass
proba = ts.predict_proba(X)  # lazy: a dask array, computed chunk by chunk
print(f"T = {ts.temperature_:.4f} after {ts.n_iter_} passes")
print(f"ECE {expected_calibration_error(labels, proba):.4f}  NLL {negative_log_likelihood(labels, proba):.4f}")
in_memory = TemperatureScaling().fit(logits.astype(np.float32), y)
print(f"in memory: T = {in_memory.temperature_:.4f}")
