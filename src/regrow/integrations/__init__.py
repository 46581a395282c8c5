"""regrow inside other training frameworks, one module each (docs/INTEGRATIONS.md).

- :mod:`regrow.integrations.transformers`: ``RegrowCallback`` for the Hugging Face ``Trainer``
  and ``strip_masks`` for a plain model to save or publish.
- :mod:`regrow.integrations.lightning`: ``RegrowCallback`` for ``lightning.pytorch.Trainer``.

Importing this package imports no framework: each module imports its own when it is imported,
and says which extra to install when the framework is missing.
"""
