"""Where models live and are judged live: the registry (``registry/``), durable writes,
live scoring and shadow trials (``live``, ``scoring``, ``live_state``, ``trial``), the
promotion test (``sequential``), alert sinks, and the ops files (Grafana, Prometheus,
compose, Kubernetes). Imports trainers and monitors, never the daemon."""
