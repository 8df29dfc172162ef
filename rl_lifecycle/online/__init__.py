"""Online learning as plain code: which runs a completed window calls for (`planner`); any scheduler drives it."""
