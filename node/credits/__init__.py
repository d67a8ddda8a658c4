"""Credits: signed receipts, the ledger, balances, reputation and payout addresses."""
