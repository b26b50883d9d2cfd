"""What the server reports and measures: Prometheus metrics (``metrics``, per model in ``model_metrics``) and
the memory of the server's processes and its budgets (``memory``)."""
