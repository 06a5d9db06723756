"""Bulk runs: `keras-sam auto` and `embed` over whole datasets on a Ray
cluster. Ray and pyarrow are imported only when they are used
(`pip install "keras-sam[ray]"`)."""

from keras_sam.bulk.listing import list_pictures
from keras_sam.bulk.pipeline import Summary
from keras_sam.bulk.pipeline import connect
from keras_sam.bulk.pipeline import disconnect
from keras_sam.bulk.pipeline import run_bulk

__all__ = ["Summary", "connect", "disconnect", "list_pictures", "run_bulk"]
