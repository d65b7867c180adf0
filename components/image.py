"""The project image every component runs in (docker/Dockerfile); override with MEDSEGLLM_IMAGE when compiling."""

import os

IMAGE = os.environ.get("MEDSEGLLM_IMAGE", "medsegllm/medsegllm:0.1.0")
