"""Phantom styles: independently written renderers behind one contract (``contract.StyleScan``)."""
