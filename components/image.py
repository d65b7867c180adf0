"""The project images the components run in; override with MEDSEGLLM_IMAGE / MEDSEGLLM_CUDA_IMAGE when compiling.

IMAGE is docker/Dockerfile (CPU); CUDA_IMAGE is docker/Dockerfile.cuda, for the training task on a GPU node.
"""

import os

IMAGE = os.environ.get("MEDSEGLLM_IMAGE", "medsegllm/medsegllm:0.1.0")
CUDA_IMAGE = os.environ.get("MEDSEGLLM_CUDA_IMAGE", "medsegllm/medsegllm:0.1.0-cuda")
