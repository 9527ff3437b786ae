"""The backup command: dump, publish, restore-test (verify) and retention."""
