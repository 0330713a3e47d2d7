"""`imgcls serve`: the app (app.py), the model it answers with and its hot reload (models.py), uploads
(uploads.py), micro-batching (batcher.py), metrics and the access log (telemetry.py), and the process
that runs it with a graceful stop (server.py)."""
from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
