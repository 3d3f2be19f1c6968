"""The Flower ServerApp: Flower's own strategies, central evaluation, privacy ledger and the run record."""
