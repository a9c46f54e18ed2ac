#!/usr/bin/env bash
# Start / stop a throwaway RabbitMQ (Debian's rabbitmq-server package) on loopback,
# used as the oracle for the acceptance suite and for side-by-side benchmarks.
#
#   tests/python/run_rabbitmq.sh start    # listens on 127.0.0.1:${ORACLE_PORT:-5673}
#                                         # and MQTT (rabbitmq_mqtt) on 127.0.0.1:${ORACLE_MQTT_PORT:-1885}
#   tests/python/run_rabbitmq.sh stop
#   tests/python/run_rabbitmq.sh status
#   tests/python/run_rabbitmq.sh ctl list_queues name messages_ready messages_unacknowledged
#
# Needs: apt-get install -y rabbitmq-server  (and no service of the package running:
#        `service rabbitmq-server stop` if one was started).
# Everything lives under $ORACLE_DIR (default /tmp/liebre-oracle); `stop` leaves it,
# `wipe` removes it.
set -euo pipefail

PORT="${ORACLE_PORT:-5673}"
# the MQTT plugin (MQTT 3.1.1 only in 3.10) for the cross-protocol tests; 0 disables it
MQTT_PORT="${ORACLE_MQTT_PORT:-1885}"
DIR="${ORACLE_DIR:-/tmp/liebre-oracle}"
NODE="${ORACLE_NODENAME:-liebre-oracle@localhost}"

# Debian's /usr/sbin wrappers `su` to the rabbitmq user (which resets HOME and cannot
# write into a root-owned directory); call the real scripts directly, as the caller.
RMQ_BIN="${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}"
export HOME="$DIR/home"                      # Erlang cookie lives here
export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
export RABBITMQ_LOG_BASE="$DIR/log"
export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
export RABBITMQ_PID_FILE="$DIR/rabbitmq.pid"
export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
# inter-node (distribution) port and epmd only on loopback too
export RABBITMQ_DIST_PORT="$((PORT + 20000))"
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

prepare() {
    mkdir -p "$HOME" "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
    chmod 700 "$HOME"
    if [ ! -f "$HOME/.erlang.cookie" ]; then
        head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$HOME/.erlang.cookie"
        chmod 400 "$HOME/.erlang.cookie"
    fi
    cat >"$RABBITMQ_CONFIG_FILE" <<CONF
listeners.tcp.1 = 127.0.0.1:$PORT
loopback_users.guest = false
log.file.level = info
log.console = false
CONF
    echo '[].' >"$RABBITMQ_ADVANCED_CONFIG_FILE"
    if [ "$MQTT_PORT" != 0 ]; then
        cat >>"$RABBITMQ_CONFIG_FILE" <<CONF
mqtt.listeners.tcp.default = 127.0.0.1:$MQTT_PORT
mqtt.allow_anonymous = true
mqtt.default_user = guest
mqtt.default_pass = guest
mqtt.vhost = /
mqtt.exchange = amq.topic
CONF
        echo '[rabbitmq_mqtt].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    else
        echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    fi
    : >"$RABBITMQ_CONF_ENV_FILE"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/${1:-$PORT}") 2>/dev/null
}

# the plugins' listeners open a moment after the AMQP one
ready() {
    port_open && { [ "$MQTT_PORT" = 0 ] || port_open "$MQTT_PORT"; }
}

case "${1:-start}" in
start)
    if port_open; then
        echo "something already listens on 127.0.0.1:$PORT"
        exit 0
    fi
    prepare
    nohup "$RMQ_BIN/rabbitmq-server" >"$DIR/stdout.log" 2>&1 &
    echo $! >"$DIR/launcher.pid"
    for _ in $(seq 1 120); do
        if ready; then
            echo "RabbitMQ $NODE ready on 127.0.0.1:$PORT, MQTT on 127.0.0.1:$MQTT_PORT (data in $DIR)"
            exit 0
        fi
        if ! kill -0 "$(cat "$DIR/launcher.pid")" 2>/dev/null; then
            echo "rabbitmq-server exited; see $DIR/stdout.log and $DIR/log" >&2
            tail -n 40 "$DIR/stdout.log" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    echo "timed out waiting for 127.0.0.1:$PORT; see $DIR/log" >&2
    exit 1
    ;;
stop)
    # A pid file left by a node that is gone would make `rabbitmqctl stop`
    # wait for it; and never wait more than a minute for a live one.
    if [ -f "$RABBITMQ_PID_FILE" ] && ! kill -0 "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null; then
        rm -f "$RABBITMQ_PID_FILE"
    fi
    if [ -f "$RABBITMQ_PID_FILE" ]; then
        timeout 60 "$RMQ_BIN/rabbitmqctl" -n "$NODE" stop "$RABBITMQ_PID_FILE" \
            || kill "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null || true
        rm -f "$RABBITMQ_PID_FILE"
    fi
    # epmd was started by the node; stop it only if no other node is registered
    if epmd -names 2>/dev/null | grep -q '^name '; then :; else epmd -kill >/dev/null 2>&1 || true; fi
    ;;
status)
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" status
    ;;
ctl)
    shift
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@"
    ;;
wipe)
    "$0" stop
    rm -rf "$DIR"
    ;;
*)
    echo "usage: $0 start|stop|status|ctl ARGS...|wipe" >&2
    exit 2
    ;;
esac
