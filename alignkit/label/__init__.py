"""Human feedback in the browser: ``alignkit label`` (preferences, reasons as CUT-style judgments,
agreement) and ``alignkit moral-graph`` (Moral Graph Elicitation, arXiv 2404.10636).

``pairs`` reads what to label, ``session`` is the queue (resume, undo, left/right order), ``store`` the output
files, ``server``/``moral_api`` the Starlette routes, ``static/`` the pages, ``agreement`` Cohen's and Fleiss'
kappa, ``moral_graph`` the scenario, storage and PageRank aggregation, ``moral_report`` the export.
"""
