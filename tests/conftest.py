"""Shared test setup: this folder is on ``sys.path`` (pytest's rootdir-relative import of this
conftest), so every test can import the helpers in ``tests/testing_utils.py``."""
