"""``onevec bench``: every hop measured against its own ceiling, in one run, on one broker.

Sections (each a row group of one table; ratios are what matter, since absolute figures
depend on what else the machine runs), one module each:

- ``stream``: **pipeline** (worker processes sessionizing and learning a MovieLens-100k slice,
  against the ceilings of ``ceilings``: raw aiokafka, the Quix Streams peer of ``quix_peer``
  run from its own virtualenv, and the no-op Faust agent of ``noop``) and **freshness**
  (seconds from a click on a new item to its vector being served, ``freshness``), in each
  worker layout (``workers``: one process, the ingest + learn split, the supervised default);
- ``learner``: the trainer, whole learner rounds and the learner with its sink, against a raw
  torch loop of the same model;
- ``sink``: ``UpsertBuffer`` over ``QdrantStore`` against raw ``QdrantClient.upsert``;
- ``memory``: peak RSS and learner speed against the catalogue size, one child per size;
- ``scale`` (opt-in, ``OPT_IN_SECTIONS``): the pipeline on the synthetic scale stream at a
  catalogue's size (default 1M items, 10M events): end to end, freshness and RSS;
- ``distributed`` (opt-in): learning on 1 and 2 ranks (torch.distributed, gloo over loopback):
  the gradient exchange's cost, a step's, and examples/s with prequential HR@20 / MRR@20 over
  the same MovieLens-100k events.

``report`` holds the rows and their table, ``context`` what every section is handed, ``run``
the entry point; ``python -m onevec.streams.tools.bench noop|memory ...`` runs a child process
(``__main__``). docs/performance.md says what each row measures.
"""

from onevec.streams.tools.bench.context import BenchSizes
from onevec.streams.tools.bench.report import BenchRow
from onevec.streams.tools.bench.run import OPT_IN_SECTIONS, SECTIONS, run_bench, unknown_sections

__all__ = ["OPT_IN_SECTIONS", "SECTIONS", "BenchRow", "BenchSizes", "run_bench", "unknown_sections"]
