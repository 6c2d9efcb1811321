"""The web UI (`k5tune server`): the app factory (app.py) and its routes (routes/), training runs as
processes with a SQLite history and a state read from each run's structured events (runs/), live
progress as Server-Sent Events (stream.py), path confinement (paths.py) and the one path policy for
both files' settings (policy.py), saves that keep the previous version (saving.py), the GPUs and the
queue (system.py), access rules (auth.py) and the page itself (static/: plain HTML, JavaScript and CSS,
nothing from a CDN)."""
