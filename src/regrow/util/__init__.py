"""Small helpers the harness layers share: one YAML loader with its error wording
(:mod:`.yamlfile`), one "did you mean" matcher (:mod:`.suggest`) and one signal-handling context
manager (:mod:`.signals`). Imports nothing of regrow, so every layer may use it."""
