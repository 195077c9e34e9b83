"""Code the proxy process never runs: the fork template and its forks run it (apps.py
builds the app, warmup.py sends the warm-up requests, forksafe.py works around fork(),
failures.py counts the forks' crashes), and check-config's throw-away interpreter
(check_app.py). The proxy's side of fork mode talks to it over the control socket only.

Still beside it in backends/process/, to move here: template.py (the template's main),
_forked.py (a fork's first moments), _serve.py, _wsgi.py and _working.py (a fork
serving)."""
