"""Cohorts: contrast Shapley over many cases on Dask distributed, and the study's cohort statistics.

cases (the table of cases) → execute (Dask: one task per case and architecture, models cached per worker) →
table (one row per case, architecture and region, read back from the result folders) → stats → report.
"""
