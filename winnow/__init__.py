"""winnow: generate N candidates per prompt, score them, keep the best, catalog everything.

The project's folders install under this name: ``winnow.flows`` (Prefect flows and the CLI),
``winnow.pipeline`` (the engine), ``winnow.models``, ``winnow.scoring``, ``winnow.catalog``.
"""
