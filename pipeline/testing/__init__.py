"""Test support shipped with the pipeline: a deterministic fake encoder (:mod:`.encoder`)."""
