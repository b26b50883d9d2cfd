#!/bin/sh
# `serve` (how SageMaker starts containers) or no argument: run the server, replaced by exec so SIGTERM
# reaches it: with one shard that is MLServer, which drains in-flight requests before exiting; with
# several (MLSERVER_MME_SHARDS, `auto` in the image) it is supervisord, which stops HAProxy softly, then
# the shards, which drain.
set -e
if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
  exec mlserver-mme serve /opt/mlserver-mme/model-settings
fi
exec "$@"
