"""Evaluation on real streams (``onevec eval``).

* ``harness``: prequential (test-then-train) runner, one protocol for every recommender;
* ``baselines``: the live model and the baselines it is compared with;
* ``data``: events, catalogue, probe labels and purchase / return outcomes;
* ``sources``, ``probes``, ``tasks``: paper 1's tasks over pluggable per-source item vectors;
* ``grid``: paper 3's kernel alignment against probe accuracy over embedding variants;
* ``drift``: live-model snapshots, drift, kernel alignment tracked per upsert;
* ``run``: one evaluation end to end; ``report``: Markdown + PNG plots.
"""
