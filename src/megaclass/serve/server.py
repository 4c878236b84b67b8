"""``megaclass serve``: an export folder's model behind the HTTP API of ``megaclass.serve.app``,
under uvicorn. Needs ``pip install "megaclass[serve]"`` (FastAPI, uvicorn)."""

from __future__ import annotations

from pathlib import Path

from megaclass.inference import load_export, read_description

SEARCHES = ("auto", "exact", "hnsw", "binary_graph")


def load_app(
    folder: str | Path,
    max_rows: int = 256,
    max_wait_s: float = 0.0,
    search: str = "auto",
    ef: int = 256,
    timeout_s: float = 10.0,
):
    """The FastAPI app over the export in ``folder`` (its model and index loaded first).

    search: ``"hnsw"`` or ``"binary_graph"`` (the export's index of that kind, beam ``ef``),
    ``"exact"`` (every class scored) or ``"auto"``: the export's index when it has one.
    """
    try:
        from megaclass.serve.app import create_app
        from megaclass.serve.search import SEARCHERS, ExactSearch
    except ImportError as error:
        raise ValueError(
            f'megaclass serve needs {error.name}: pip install "megaclass[serve]"'
        ) from None
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    folder = Path(folder)
    model = load_export(folder)
    manifest = read_description(folder / "manifest.json")
    kind = manifest.get("index", {}).get("kind")  # None: exported without
    if search == "auto":
        search = kind if kind in SEARCHERS else "exact"
    if search != "exact" and search != kind:
        raise ValueError(
            f"{folder} has no {search} index (it has: {kind or 'none'}): export it with "
            f"megaclass export --index {search}"
        )
    if search == "exact":
        searcher = ExactSearch(model.head)
    else:
        searcher = SEARCHERS[search].from_export(folder, model.description.scale, ef)
    return create_app(
        model, manifest.get("step"), max_rows, max_wait_s, searcher=searcher, timeout_s=timeout_s
    )


def serve(folder: str | Path, host: str, port: int, **settings) -> None:
    """Serve the export in ``folder`` until interrupted (``settings``: those of ``load_app``)."""
    app = load_app(folder, **settings)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
