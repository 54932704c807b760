#!/bin/sh
# Starts one Redis Cluster node.
#
# A node remembers its peers by IP address in nodes.conf, and a pod gets a new address whenever
# it restarts. One restarted node is found again through gossip; a cluster whose every node
# restarted at once is not. So each node first re-resolves the hostname every peer announced
# (kept in nodes.conf beside its address) and writes the current address back.
set -eu

conf=/data/nodes.conf
if [ -s "$conf" ]; then
    : > "$conf.new"
    while IFS= read -r line; do
        # Node lines: <id> <ip>:<port>@<cport>,<hostname>[,<aux>...] <flags> ...
        addr=$(printf '%s\n' "$line" | awk '{print $2}')
        case "$addr" in
            *@*,?*)
                host=$(printf '%s\n' "$addr" | cut -d, -f2)
                ip=$(getent hosts "$host" | awk 'NR == 1 {print $1}')
                if [ -n "$ip" ]; then
                    port=${addr%%@*}
                    port=${port##*:}
                    line=$(printf '%s\n' "$line" | awk -v addr="$ip:$port@${addr#*@}" '{$2 = addr; print}')
                fi
                ;;
        esac
        printf '%s\n' "$line" >> "$conf.new"
    done < "$conf"
    mv "$conf.new" "$conf"
fi

# noeviction: Herald's conversation references and job records must never be evicted; size the
# memory limit instead.
exec redis-server \
    --port 6379 \
    --dir /data \
    --appendonly yes \
    --appendfsync everysec \
    --maxmemory-policy noeviction \
    --cluster-enabled yes \
    --cluster-config-file /data/nodes.conf \
    --cluster-node-timeout 5000 \
    --cluster-announce-hostname "$POD_NAME.redis-cluster-headless.$POD_NAMESPACE.svc" \
    --requirepass "$REDIS_PASSWORD" \
    --masterauth "$REDIS_PASSWORD"
