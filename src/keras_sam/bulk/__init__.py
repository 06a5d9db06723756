"""Bulk runs: `keras-sam auto` and `embed` over whole datasets on a Ray
cluster (`keras_sam.bulk.pipeline.run_bulk`). Ray and pyarrow are imported
only when a run starts (`pip install "keras-sam[ray]"`)."""
