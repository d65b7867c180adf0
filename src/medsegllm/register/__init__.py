"""Register stage: log a gated model to MLflow and move the champion alias when it is better."""
