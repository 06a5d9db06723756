"""The web app of `keras-sam serve`: a page to click on pictures and the
HTTP API it uses (`create_app`), on FastAPI and uvicorn (the `serve`
extra). See docs/serve.md."""
