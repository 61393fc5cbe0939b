"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""
import atexit
import gc
import sys


# The collector would sweep every object built so far again and again while the app's
# modules load, and once more at exit: a third of a CLI command's wall time
# (`flask --app wsgi resources list`: 0.66 s median in bench --only cli, 0.42 s without).
# So it rests while the app is built; what exists then is frozen (kept out of every later
# sweep: nothing of it becomes garbage, and forked web workers then share its pages), and
# frozen again at exit, where the process's memory goes back to the system in one piece.
# Files are still flushed and closed as the modules are torn down.
gc.disable()
try:
    from app import create_app, serves_pages
    from app.observability import logs

    serving = serves_pages(sys.argv)
    app = create_app(pages=serving, serving=serving)
    logs.configure(app.config["LOG_FORMAT"])  # text, or one JSON object per line
finally:
    gc.freeze()
    gc.enable()
atexit.register(gc.freeze)
