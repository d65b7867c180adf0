"""Kubeflow components: DICOM ingest fanned out over shards (plan -> one task per shard -> merge + data gate).

A series and its SEGs never span shards, and the merge refuses outputs that do not add up to the
plan, so the merged artifact equals a single ingest run (medsegllm.ingest.shards).
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def ingest_plan(cohort: Input[Dataset], n_shards: int, data_version: str, plan: Output[Artifact]) -> list:
    """Split cohort/dicom into shards (headers only); returns the shard indices to fan out over.

    data_version is part of the cache key only: bump it when the data behind cohort_uri changed.
    """
    from pathlib import Path

    from medsegllm.ingest.shards import write_plan

    summary = write_plan(Path(cohort.path) / "dicom", n_shards, Path(plan.path))
    plan.metadata.update({"data_version": data_version, "n_files": summary["n_files"]})
    return list(range(n_shards))


@dsl.component(base_image=IMAGE)
def ingest_shard(params_yaml: str, cohort: Input[Dataset], plan: Input[Artifact], shard: int,
                 ingested_shard: Output[Dataset]):
    from pathlib import Path

    from medsegllm.common.deid import resolve_salt
    from medsegllm.config import parse_params
    from medsegllm.ingest.shards import run_ingest_shard

    params = parse_params(params_yaml)
    run_ingest_shard(Path(cohort.path) / "dicom", Path(plan.path), shard, Path(ingested_shard.path), params.ingest,
                     resolve_salt(params.ingest), holdout_devices=params.split.holdout_devices)


@dsl.component(base_image=IMAGE)
def ingest_merge(plan: Input[Artifact], shards: Input[List[Dataset]], ingested: Output[Dataset]):
    from pathlib import Path

    from medsegllm.gates.run import run_check
    from medsegllm.ingest.shards import merge_shards

    merge_shards([Path(s.path) for s in shards], Path(ingested.path), Path(plan.path))
    run_check("ingest", Path(ingested.path))
