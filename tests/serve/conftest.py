"""One bundled model and one real server on 127.0.0.1 for the server's
tests (API and page)."""

import pytest

from support.live_server import serve_in_thread

# Small limits, so that the limit tests need small files.
MAX_UPLOAD_BYTES = 400_000
MAX_PIXELS = 600_000
MAX_IMAGES = 12


@pytest.fixture(scope="session")
def shapes_model():
    import keras_sam

    return keras_sam.SAM.from_preset("sam_shapes", weights=True)


@pytest.fixture(scope="session")
def server(shapes_model):
    """`(base URL, app)` of the app on the bundled model."""
    from keras_sam.cli.serve import BUNDLED_EVERYTHING
    from keras_sam.serve.app import create_app

    app = create_app(
        shapes_model,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_pixels=MAX_PIXELS,
        max_images=MAX_IMAGES,
        everything_options=BUNDLED_EVERYTHING,
    )
    with serve_in_thread(app) as url:
        yield url, app
