"""Development benchmarks of the project, outside the package: they time the package's own code
paths, and their figures are recorded in ``benchmarks/RESULTS.md``.

* :mod:`benchmarks.pipeline`: is evaluation as fast as the model allows, and is its fps figure
  true? (``python -m benchmarks.pipeline``, ``./workbook bench``)
* ``benchmarks/decoders.py``: the PNG decoders side by side (a script).
"""
