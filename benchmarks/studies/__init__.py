"""The studies: one script per table in the model card, the docs or ``benchmarks/results/``, each named after the
table it makes and run as ``python -m cellsdk.benchmarks.studies.NAME`` (``--help`` says what it measures). The
harness behind ``cellsdk-bench`` is the package above (:mod:`cellsdk.benchmarks`); studies use it, never the other
way round.
"""
