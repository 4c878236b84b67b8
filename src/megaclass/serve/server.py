"""``megaclass serve``: an export folder's model behind the HTTP API of ``megaclass.serve.app``,
under uvicorn. Needs ``pip install "megaclass[serve]"`` (FastAPI, uvicorn)."""

from __future__ import annotations

from pathlib import Path

from megaclass.inference import load_export, read_description


def load_app(folder: str | Path, max_rows: int = 256, max_wait_s: float = 0.005):
    """The FastAPI app over the export in ``folder`` (its model loaded first)."""
    try:
        from megaclass.serve.app import create_app
    except ImportError as error:
        raise ValueError(
            f'megaclass serve needs {error.name}: pip install "megaclass[serve]"'
        ) from None
    folder = Path(folder)
    model = load_export(folder)
    step = read_description(folder / "manifest.json").get("step")
    return create_app(model, step, max_rows, max_wait_s)


def serve(folder: str | Path, host: str, port: int, max_rows: int, max_wait_s: float) -> None:
    """Serve the export in ``folder`` until interrupted."""
    app = load_app(folder, max_rows, max_wait_s)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
