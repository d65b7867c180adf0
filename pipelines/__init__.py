"""Kubeflow pipelines wiring the components of components/ (compiled YAML checked in beside them)."""
