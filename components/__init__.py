"""Kubeflow components: one file per stage, each a thin call into the medsegllm library plus its data gate."""
