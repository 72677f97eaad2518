"""Examples that run as tests (tests/integration/test_examples.py).

Their dependencies: ``pip install -e '.[examples]'``.
"""
