"""Alert content and formats: severity, labels, payloads for webhooks and Alertmanager, signatures."""
