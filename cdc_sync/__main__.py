"""``python -m cdc_sync``."""

from cdc_sync.cli import main

main()
