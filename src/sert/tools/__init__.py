"""Tools around sert's stages, apart from them: they use only the stages' public API, and no
stage module imports them (tests/test_architecture.py checks both).

- :mod:`sert.tools.bench` -- ``sert bench``: the stages' throughput against their baselines.
"""
