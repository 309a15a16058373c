"""The pieces of ``benchmarks/bench.py`` (run that script; see ``benchmarks/README.md``).

Leaf first: ``common`` (paths, the hermetic environment, the wheelhouse, timing and formatting
helpers that the other benchmark scripts can use too) <- ``plugins`` (the two plugins) <-
``inprocess`` (the ally side, timed inside a fresh process) <- ``contenders`` (run.sh,
virtualenv + pip, run.sh with uv, ally pip, ally uv) <- ``scenarios`` (cold loads, the second
plugin, disk, warm loads, tool calls, imports) <- ``report`` (the table, the goals,
``results.md``) <- ``driver`` (the command line, the rounds and their rotation).
"""
