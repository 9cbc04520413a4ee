"""``ssjobs web``: the dashboard (docs/web.md).

- :mod:`.model`: the data of every page, as plain dicts (status, fleet, dead letters,
  tracked jobs, schedules); nothing in it knows about HTTP.
- :mod:`.auth`: the token, the session cookie and CSRF tokens.
- :mod:`.app`: the ASGI application and the gate in front of it (root_path, login,
  security headers); :mod:`.pages` the HTML pages and their forms; :mod:`.api` the JSON API.
- :mod:`.views`: the Jinja2 environment (autoescaping), filters, sparkline, static assets
  (``templates/`` and ``static/`` are package data; no CDN, nothing from outside).
- :mod:`.server`: uvicorn, and the refusal to serve a non-loopback address without a token.

Needs the ``web`` extra: ``pip install 'ssjobs[web]'`` (starlette, uvicorn, jinja2).
"""
