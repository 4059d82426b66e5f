"""The sequence stage: small models over each series of per-slice CNN outputs, and its out-of-fold bookkeeping."""
