"""Integrations of regrow with training frameworks (Lightning, Hugging Face Trainer)."""
