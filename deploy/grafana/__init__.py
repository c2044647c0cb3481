"""The Grafana dashboard of ctd: its definition (``dashboard``) and, beside it, the generated
``ctd-dashboard.json`` and the provisioning files that compose mounts into Grafana."""
