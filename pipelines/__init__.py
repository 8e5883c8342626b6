"""Job entry points: Beam pipelines (extract, embed) and PyTorch/CLI jobs (train, search)."""
