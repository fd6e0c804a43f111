"""The model a run starts from (loading, GGUF conversion, checkpoint directories) and
what a run writes back (the export)."""
