"""`latentloop serve`: an OpenAI-compatible HTTP server over the continuous-batching engine.

One background thread owns the engine (`worker.py`); HTTP handlers (`app.py`) only parse requests
(`protocol.py`), hand them to that thread and relay its tokens (`stream.py`), so a slow client or a
bad request never stalls or crashes the model. Needs the `serve` extra (fastapi, uvicorn,
prometheus-client); nothing here imports them until a server is built.
"""
