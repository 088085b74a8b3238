"""Reproducible benchmark of tornado-signin against its ceiling and its peers (issue #7).

One command runs everything: ``.venv/bin/python -m bench.run`` (see bench/README.md).
"""
