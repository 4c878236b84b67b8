"""Serving a trained model over HTTP: ``megaclass serve EXPORT_DIR`` (FastAPI under uvicorn,
``pip install "megaclass[serve]"``); see ``megaclass.serve.app`` for the wire format."""
