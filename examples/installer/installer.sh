# Helpers for examples/install-daemonset.yaml (sourced by its container command and preStop hook).

# The node's containerd reads its configuration only at start. Through the host's systemd: the
# pod shares the host PID namespace (hostPID), so PID 1 is the host's init.
restart_containerd() {
  nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd
}

# Sets (label_node '"installed"') or removes (label_node null) the podcr.io/runtime label on this
# node with the pod's service account: the RuntimeClass schedules podcr pods only where it is set.
label_node() {
  sa=/var/run/secrets/kubernetes.io/serviceaccount
  curl -sSf --cacert "$sa/ca.crt" \
    -H "Authorization: Bearer $(cat "$sa/token")" \
    -H 'Content-Type: application/merge-patch+json' \
    -X PATCH "https://kubernetes.default.svc/api/v1/nodes/$NODE_NAME" \
    -d "{\"metadata\":{\"labels\":{\"podcr.io/runtime\":$1}}}" >/dev/null
}
