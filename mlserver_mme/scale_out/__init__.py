"""Running several shards of the server behind HAProxy: ``mlserver-mme serve`` (``serve``), how many shards
and which ports (``shards``), and the HAProxy configuration that routes a model to its shard (``haproxy``)."""
