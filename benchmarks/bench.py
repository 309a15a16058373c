#!/usr/bin/env python3
"""ally against the seed's ``run.sh`` and against virtualenv + pip, side by side.

Run with the dev venv's interpreter (it must be able to ``import ally_core``)::

    .venv/bin/python benchmarks/bench.py                 # local wheelhouse AND PyPI
    .venv/bin/python benchmarks/bench.py --no-index-run  # local wheelhouse only (no network
                                                         # after the wheelhouse is cached)
    .venv/bin/python benchmarks/bench.py --repeat 1      # one round of cold loads (quicker,
                                                         # noisier; the default is 3)

Contenders, each with its OWN empty cache/data/config dirs (XDG_*, pip cache, virtualenv
app-data, ally home) so that every "cold" number really starts from nothing:

* ``run.sh``  — the seed's wrapper, byte for byte: ``python3 -m venv`` + ``pip install -r`` +
  ``exec``. Timed with ``bash -x`` and a ``$EPOCHREALTIME`` trace prompt, so the moment the
  env is ready (the ``exec`` line) is known without changing the script.
* ``virtualenv + pip`` — the same script with ``virtualenv`` in place of ``python3 -m venv``.
* ``run.sh with uv`` — the same script with ``uv venv`` + ``uv pip install`` (the uv ally
  uses): the fastest hand-written wrapper, and the reference for what ally adds to uv.
* ``ally (pip)`` — ``ALLY_INSTALLER=pip``: virtualenv + pip inside ally.
* ``ally (uv)`` — the default backend.

ally is measured in-process (``Host.load()`` / ``BoundTool.call()`` inside a fresh Python
process per step, as a host application would embed it). Everything runs with the machine's
pip/uv configuration switched off (``ally_core.testing.hermetic_environ``); the "PyPI" rows use
pip's and uv's default index, https://pypi.org/simple, over the network.

The Markdown table is printed and written to ``benchmarks/results.md``. See README.md.

The code lives in ``benchlib/`` (``driver``: this command line, the rounds; ``contenders``;
``scenarios``; ``report``; ``inprocess``: the ally side of a measurement, which this script
runs in a fresh process through the hidden ``--_in-process`` flag; ``common``: helpers the
other benchmark scripts can use too).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Optional

# Also the names other benchmark scripts import from here (``from bench import ...``).
from benchlib.common import CACHE, RESULTS, WHEELHOUSE, bench_environ, ensure_wheelhouse
from benchlib.inprocess import FLAG, measure

__all__ = ["CACHE", "RESULTS", "WHEELHOUSE", "bench_environ", "ensure_wheelhouse", "main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The benchmark's command line (:func:`benchlib.driver.main`)."""
    from benchlib import driver  # not needed by the in-process side

    return driver.main(argv)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == FLAG:
        print(json.dumps(measure(sys.argv[2], json.loads(sys.argv[3])), default=str))
        sys.exit(0)
    sys.exit(main())
