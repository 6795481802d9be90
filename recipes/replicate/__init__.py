"""The method in miniature (`make replicate`, `python -m recipes.replicate` from the repository root).

`miniature` runs the ordinary loop (`selfjudge run`) twice from one base model, with majority-vote
and with gold labels, and reads the held-out judgments back into tables, a plot and results.json;
`curriculum` builds its three-phase base model; `diagnostics` measures the base judge's skills and
the supervised ceiling. Figures and the research log: docs/replication.md, docs/research-log.md.
"""
