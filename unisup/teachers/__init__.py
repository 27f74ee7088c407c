"""Teacher cascade: ordinal cross-encoder teachers, their Triton export, backends,
cascade labeling in resumable shards, and the quality audit."""
