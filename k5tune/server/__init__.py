"""The web UI (`k5tune server`): FastAPI app (app.py), training runs as processes with a SQLite history
(runs.py), live progress as Server-Sent Events (events.py), path confinement (paths.py), access rules
(auth.py) and the page itself (static/: plain HTML, JavaScript and CSS, nothing from a CDN)."""
