"""Matplotlib figures for convlens results (imported lazily; the Agg backend, no display needed).

Result objects' ``.plot()`` methods delegate here; report sections turn the figures into PNGs.
Figures only draw what they are given: nothing here imports computation (tests/test_layout.py).
"""
