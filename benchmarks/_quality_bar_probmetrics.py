"""Worker of ``quality_bar.py``: probmetrics' calibrators on every split of one setting.

Runs in the separate virtual environment that has probmetrics (``/work/venvs/qbar``), not
in precal's: ``python _quality_bar_probmetrics.py IN.npz OUT.npz '["ts-mix", "sms"]'``.
``IN.npz`` holds, per job ``j`` (a setting), the logits ``z<j>``, labels ``y<j>`` and
``cal<j>_<s>`` / ``test<j>_<s>`` row indices; ``OUT.npz`` gets ``p_<name>_<j>_<s>`` (test-half
probabilities) and ``meta`` (JSON: fit seconds and errors per ``name|j|s``). One process for
all jobs: importing probmetrics takes tens of seconds. Calibrators get the logits as ``CategoricalLogits`` (float64),
through ``fit_torch`` / ``predict_proba_torch``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)


def main(src: str, dst: str, names: list[str]) -> None:
    from probmetrics.calibrators import get_calibrator
    from probmetrics.distributions import CategoricalLogits

    d = np.load(src)
    out, fit_s, errors = {}, {}, {}
    jobs = sorted(int(k[1:]) for k in d.files if k.startswith("z"))
    for j, s in [(j, s) for j in jobs for s in range(sum(1 for k in d.files if k.startswith(f"cal{j}_")))]:
        z, y = torch.as_tensor(d[f"z{j}"], dtype=torch.float64), torch.as_tensor(d[f"y{j}"], dtype=torch.long)
        cal, test = torch.as_tensor(d[f"cal{j}_{s}"]), torch.as_tensor(d[f"test{j}_{s}"])
        for name in names:
            key = f"{name}|{j}|{s}"
            try:
                cal_ = get_calibrator(name)
                t0 = time.perf_counter()
                cal_.fit_torch(CategoricalLogits(z[cal]), y[cal])
                fit_s[key] = time.perf_counter() - t0
                p = cal_.predict_proba_torch(CategoricalLogits(z[test])).get_probs()
                out[f"p_{name}_{j}_{s}"] = p.detach().double().numpy()
            except Exception as exc:  # noqa: BLE001 - reported to the study, not fatal
                errors[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    np.savez(dst, meta=json.dumps({"fit_s": fit_s, "errors": errors}), **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
