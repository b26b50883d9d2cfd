#!/bin/sh
# `serve` (how SageMaker starts containers) or no argument: run the server, as PID 1's only child
# replaced by exec so SIGTERM reaches MLServer, which drains in-flight requests before exiting.
set -e
if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
  exec mlserver start /opt/mlserver-mme/model-settings
fi
exec "$@"
