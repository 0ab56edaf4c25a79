"""The lab: what measures, demonstrates and develops the product, and is not part of it.

Benchmarks (``benchmark/``), evaluation and the development matrix (``evaluation/``),
the seeded event generator, the demo, and the local broker, cluster and serve
launchers (``local/``). The product (the job, training, ``streamrec serve``, the
registry, retraining, replay) never imports from here; ``tests/unit/test_layers.py``
checks it. The CLI's lab commands are the one way in.
"""
