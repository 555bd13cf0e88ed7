"""One cell: compose → data → method → Lightning module → result file (``engine.run``), its guards and results."""
