"""What report and track share beneath them: the resumable, provenance-keyed part store and the provenance
of a set of numbers (package versions, model identity, weights hash)."""
