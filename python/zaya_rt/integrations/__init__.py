"""Drop-in integrations with other libraries (transformers)."""
