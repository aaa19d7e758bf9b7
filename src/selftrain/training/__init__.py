"""Training loops: SFT on demonstrations and DPO on preference pairs (one explicit loop each)."""
