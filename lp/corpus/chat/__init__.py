"""Chat data for the instruction stage: rendering, sources, packing, the data module and
the generated offline set."""
