"""Checks of deploy/: the image, the Helm chart, the Prometheus rules and the Grafana dashboards."""
