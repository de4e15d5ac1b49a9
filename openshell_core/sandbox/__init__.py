"""The in-sandbox supervisor."""
