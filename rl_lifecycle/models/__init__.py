"""Training and acting on the canonical vectors: model specs, the gymnasium env, the SB3 trainer,
the one inference function, and MLflow tracking."""
