"""Hook functions and hook factories: interventions usable in run_with_hooks / model.hooks()."""
