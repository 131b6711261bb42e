"""The SegXAI module's helpers, kept in a package (a loose .py file beside SegXAI.py would be loaded as a module).

Everything here that can run without Qt does (installation plans, trust, the run controller, the self-test steps),
so it is tested under pytest with a real `slicer-core` scene; SegXAI.py keeps only the widget's wiring.
"""
