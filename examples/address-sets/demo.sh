#!/usr/bin/env bash
# Address sets (issue 20), by hand: the hello example served on tcp and shm
# at once, called with `courier ping` and `courier call` from the same host
# (the set's shm path) and from another network namespace (shm's abstract
# socket is not there: tcp).
#
#   sudo examples/address-sets/demo.sh        # from the repository's root
#
# Needs root and `ip` (iproute2). It builds `courier` and the hello_server
# example (debug; $CARGO_TARGET_DIR is honoured), makes a network namespace
# joined to this one by a veth pair (10.213.77.1 here, .2 there), and
# removes both, and stops the server, when it ends.
set -euo pipefail

target=${CARGO_TARGET_DIR:-target}
cargo build -q -p courier-cli --bin courier -p courier --example hello_server
courier="$target/debug/courier"
hello="$target/debug/examples/hello_server"

ns="courier-demo-$$"
veth="crd$$"
here=10.213.77.1
there=10.213.77.2
out=$(mktemp)
server=""

cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$veth" 2>/dev/null || true
    rm -f "$out"
}
trap cleanup EXIT

ip netns add "$ns"
ip link add "$veth" type veth peer name "${veth}n" netns "$ns"
ip addr add "$here/24" dev "$veth"
ip link set "$veth" up
ip netns exec "$ns" ip addr add "$there/24" dev "${veth}n"
ip netns exec "$ns" ip link set "${veth}n" up
ip netns exec "$ns" ip link set lo up

show() { echo "\$ $*"; "$@"; echo; }

echo "\$ $hello tcp://$here:0,shm &"
"$hello" "tcp://$here:0,shm" >"$out" &
server=$!
for _ in $(seq 100); do
    grep -q '^Service running at ' "$out" && break
    sleep 0.1
done
set_addr=$(sed -n 's/^Service running at //p' "$out")
[ -n "$set_addr" ] || { echo "hello_server did not start" >&2; exit 1; }
echo "Service running at $set_addr"
echo

echo "# The same host: the client speaks the set's protocols (tcp, shm) and takes shm."
show "$courier" ping "$set_addr" --count 2
show "$courier" call "$set_addr" hello Matthieu Dorier
echo "# The same host, the client pinned to tcp."
show "$courier" ping "$set_addr" --count 1 --protocol tcp
echo "# Another network namespace: shm's socket is not there, tcp is."
show ip netns exec "$ns" "$courier" ping "$set_addr" --count 2
show ip netns exec "$ns" "$courier" call "$set_addr" hello Matthieu Dorier
show "$courier" shutdown "$set_addr"
wait "$server"
server=""
echo "# What hello_server printed:"
cat "$out"
