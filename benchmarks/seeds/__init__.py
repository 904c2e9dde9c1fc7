"""Seed studies on real pretrained models: model definitions, data loading and the study scripts.

* :mod:`benchmarks.seeds.models` -- plain-torch CIFAR ResNet-20/56, LeNet-5, MiniLM + head.
* :mod:`benchmarks.seeds.data` -- loading ``../shared/data/models`` as its README says, running
  the models, and a cache of emulated logits (``emulated_logits``).
* ``seed_000.py`` ... -- one study script per seed paper (``--quick``, ``--out``); each writes
  ``benchmarks/results/seeds/seed_NNN.{json,md}``, ``docs/seeds/seed-NNN.md`` and
  ``docs/figures/seed-NNN-*.png``.
"""
