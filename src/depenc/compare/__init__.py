"""Comparing runs: ``python -m depenc.compare`` writes the report (see ``__main__``); the notebook
and ``scripts/study_table.py`` use the same modules.

* :mod:`depenc.compare.runs`: load run folders, choose and group the runs to compare;
* :mod:`depenc.compare.stats`: final values per (metric, group) aggregated with pandas, differences
  to the baseline, which metrics are shown and in which order;
* :mod:`depenc.compare.tables`: tables as formatted rows, in Markdown and HTML;
* :mod:`depenc.compare.figures`: the matplotlib figures (report and notebook);
* :mod:`depenc.compare.report`: ``index.html``, ``summary.md``, ``aggregate.csv`` and the PNGs.
"""
