"""Fuzz targets for every boundary where bytes enter td3_drive (issue 29).

Outside ``src/``: the targets import the package from above every layer (nodes, app) and are
not shipped.  ``python -m fuzz.run`` (``make fuzz``) runs them coverage-guided with atheris;
``test/test_fuzz.py`` runs each one briefly in-process so CI exercises them.
"""
