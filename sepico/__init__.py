"""sepico: SePiCo for unsupervised domain adaptation of semantic segmentation, on the Triton
kernels of the ``kernels`` package.

Floors, each importing only from those below it: ``kernels`` (ops); ``sepico.reference`` (float64
oracles), ``sepico.labels`` (labels at feature resolution), ``sepico.losses`` (map-level losses), ``sepico.estimator`` (class statistics);
``sepico.method`` (the SePiCo object: estimator + loss of one variant); ``sepico.models`` and
``sepico.data`` (networks with their registry; datasets with their names, transforms and the
day-night pieces); ``sepico.evaluation``; ``sepico.train`` (config, the step's passes, the
trainer, augmentation, checkpoints, distributed glue); the tools on top (``convert``, ``predict``,
``plot``, ``demo``, ``ablation``, ``cli``). Beneath them all: ``sepico.errors`` (what the command
reports in one line), ``sepico.files`` (atomic writes, and what a command may replace) and
``sepico.pages`` (the generated blocks of the docs pages). ``tests/test_layout.py`` holds the
plan: no cycle, no import up a floor.
"""

__version__ = "0.1.0"
