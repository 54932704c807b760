#!/bin/sh
# Forms the Redis Cluster once: three masters with one replica each. It does nothing when the
# nodes already know each other, so the Job may run again on any later apply.
# redis-cli reads the password from REDISCLI_AUTH.
set -eu

service=redis-cluster-headless
nodes=""
for i in 0 1 2 3 4 5; do
    host="redis-cluster-$i.$service"
    until [ "$(redis-cli -h "$host" ping 2>/dev/null)" = PONG ]; do
        echo "waiting for $host"
        sleep 2
    done
    # CLUSTER MEET takes addresses, not names.
    nodes="$nodes $(getent hosts "$host" | awk 'NR == 1 {print $1}'):6379"
done

known=$(redis-cli -h "redis-cluster-0.$service" cluster info | tr -d '\r' \
    | awk -F: '$1 == "cluster_known_nodes" {print $2}')
if [ "$known" -gt 1 ]; then
    echo "the cluster is already formed ($known nodes known)"
    exit 0
fi

# One argument per node: $nodes is split on purpose.
# shellcheck disable=SC2086
redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes
