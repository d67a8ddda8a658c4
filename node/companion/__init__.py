"""The owner's companion: alert rules, history, and the Telegram bot."""
