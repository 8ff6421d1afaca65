#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for the chart's e2e test (docs/kubernetes.md).
#
#   kube/cluster.sh up       start it (idempotent: a running cluster is left as it is)
#   kube/cluster.sh down     stop it and leave the host as it was (idempotent)
#   kube/cluster.sh status   say whether it runs; exit 0 only when it does
#   kube/cluster.sh env      print `export KUBECONFIG=...` for a shell
#   kube/cluster.sh clean    down, then forget the image store too (binaries stay cached)
#
# Parts: etcd, containerd, runc and the CNI plugins from Debian (installed with apt when missing);
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl and CoreDNS
# built from the Go module proxy by kube/build.sh (cached); the pod sandbox image built here from
# kube/pause.c; the project's podman images imported into containerd (re-imported only when their
# podman image id changed). Nothing is pulled: every packet stays on this machine (pods get no
# default route, and a rule drops anything from the pod range that would leave by another
# interface; CoreDNS answers NXDOMAIN for every name outside cluster.local).
#
# Everything lives under one folder, $WAITROOM_KUBE_DIR (default ~/.cache/waitroom/kube):
#   bin-<version>/, coredns-<version>/, pause-<hash>/   cached binaries (kube/build.sh)
#   containerd/                                          containerd's image store (cached)
#   state/                                               the running cluster: certificates, configs,
#                                                        etcd's data, logs, PIDs; removed by `down`
# Every process is started in a session of its own, its PID written to state/pids/, and stopped by
# that PID. `down` also removes pod sandboxes, kube-proxy's and kubelet's iptables chains, the
# bridge, leftover mounts, network namespaces and cgroups, and puts back the sysctls it recorded
# before the first start.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
KUBE_DIR="${WAITROOM_KUBE_DIR:-${WAITROOM_CACHE_DIR:-$HOME/.cache/waitroom}/kube}"
BIN="$KUBE_DIR/bin-$KUBE_VERSION"
COREDNS="$KUBE_DIR/coredns-$COREDNS_VERSION/coredns"
STATE="$KUBE_DIR/state"
CONTAINERD_ROOT="$KUBE_DIR/containerd"
PKI="$STATE/pki"
CONF="$STATE/conf"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
SOCK="$STATE/containerd/containerd.sock"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"

NODE_NAME=waitroom-kube
BRIDGE=wrkube0
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
NODE_IP=10.244.0.1             # the bridge's address: the node, its kubelet and CoreDNS live here
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
API_PORT=6443
ETCD_CLIENT_PORT=12379         # not etcd's default ports: a host's own etcd keeps them
ETCD_PEER_PORT=12380
EGRESS_COMMENT="waitroom-kube: pods never leave this machine"
PAUSE_IMAGE=localhost/waitroom-pause:1.0
# The sysctls kubelet, kube-proxy and the bridge plugin may change; recorded and put back.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  net.netfilter.nf_conntrack_tcp_be_liberal)
# Folders the kubelet and CNI use whatever they are told (the device-plugin socket, the kubelet's
# symlinks to container logs, libcni's result cache). `up` notes which of them it created; `down`
# removes those, and in the others only what is the cluster's.
HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/lib/cni)
# Start order; `down` stops them in reverse.
DAEMONS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns)

log() { printf 'kube: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

pid_of() {  # the PID of a daemon we started, if it still runs
  local f="$PIDS/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

running() {
  local d
  for d in "${DAEMONS[@]}"; do pid_of "$d" >/dev/null || return 1; done
  "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz >/dev/null 2>&1
}

# wait_for <what> <seconds> <command...>: polls every 0.2 s; on timeout shows the daemon's log.
wait_for() {
  local what=$1 timeout=$2 t0
  shift 2
  t0=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) - t0 > timeout)); then
      log "timed out after ${timeout}s waiting for $what"
      [ -f "$LOGS/$what.log" ] && tail -n 40 "$LOGS/$what.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

start() {  # start <name> <command...>: a session of its own, output to logs/<name>.log
  local name=$1
  shift
  if pid_of "$name" >/dev/null; then return 0; fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

alive() {  # the PIDs of those given that still run
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && echo "$pid"; done
  return 0
}

stop_pid() {  # stop_pid <pid>...: SIGTERM to all at once, up to 10 s, then SIGKILL
  local left
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    left=$(alive "$@")
    [ -n "$left" ] || return 0
    sleep 0.2
  done
  # shellcheck disable=SC2086 # a list of PIDs
  kill -KILL $left 2>/dev/null || true
  for _ in $(seq 25); do
    # shellcheck disable=SC2086
    [ -n "$(alive $left)" ] || return 0
    sleep 0.2
  done
}

# --- prerequisites -----------------------------------------------------------------------------

ensure_packages() {
  local need=()
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v iptables >/dev/null || need+=(iptables)
  command -v openssl >/dev/null || need+=(openssl)
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
  command -v podman >/dev/null || need+=(podman)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing with apt: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # A Debian install may start the packaged services (on machines where services start): ours use
  # other sockets and ports, but a running system etcd or containerd is left alone either way.
}

ensure_binaries() {
  "$(dirname "$0")/build.sh" all
}

# --- the pieces --------------------------------------------------------------------------------

record_host_paths() {
  [ -f "$STATE/created-paths" ] && return 0
  local p
  for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$STATE/created-paths"
}

clean_host_paths() {
  local p
  # Only ours in folders that were there before: log links into our state folder, our network's results.
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/waitroom-kube-* 2>/dev/null || true
  rm -rf /var/lib/kubelet/device-plugins/kubelet.sock 2>/dev/null || true
  [ -f "$STATE/created-paths" ] || return 0
  while read -r p; do
    case "$p" in /var/lib/kubelet | /var/log/containers | /var/lib/cni) rm -rf --one-file-system "$p" ;; esac
  done <"$STATE/created-paths"
}

record_sysctls() {
  [ -f "$STATE/sysctl.before" ] && return 0
  local k v
  for k in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$k" 2>/dev/null) || continue
    printf '%s=%s\n' "$k" "$v"
  done >"$STATE/sysctl.before.partial"
  mv "$STATE/sysctl.before.partial" "$STATE/sysctl.before"
}

restore_sysctls() {
  [ -f "$STATE/sysctl.before" ] || return 0
  local k v
  while IFS='=' read -r k v; do
    [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -q -w "$k=$v" >/dev/null 2>&1 ||
      log "could not put back $k=$v"
  done <"$STATE/sysctl.before"
}

make_pki() {
  [ -f "$PKI/done" ] && return 0
  mkdir -p "$PKI"
  local sans="IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP,DNS:localhost,DNS:kubernetes"
  sans+=",DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
      -subj "/CN=waitroom-kube-ca" 2>/dev/null
    sign() {  # sign <name> <subject> <extensions>
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" \
      "subjectAltName=$sans
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  )
  # Static tokens, one identity per component (token,user,uid,"group1,group2").
  tok() { openssl rand -hex 24; }
  {
    echo "$(tok),admin,admin,system:masters"
    echo "$(tok),system:node:$NODE_NAME,kubelet,system:nodes"
    echo "$(tok),system:kube-proxy,kube-proxy,system:node-proxier"
    echo "$(tok),system:kube-controller-manager,kube-controller-manager,"
    echo "$(tok),system:kube-scheduler,kube-scheduler,"
    echo "$(tok),waitroom:coredns,coredns,"
  } >"$PKI/tokens.csv"
  chmod 600 "$PKI/tokens.csv"
  touch "$PKI/done"
}

kubeconfig_for() {  # kubeconfig_for <file> <user in tokens.csv>
  local token
  token=$(awk -F, -v u="$2" '$2 == u {print $1}' "$PKI/tokens.csv")
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: waitroom-kube
    cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
  - name: $2
    user: {token: "$token"}
contexts:
  - name: waitroom-kube
    context: {cluster: waitroom-kube, user: "$2", namespace: default}
current-context: waitroom-kube
EOF
  chmod 600 "$1"
}

write_configs() {
  mkdir -p "$CONF" "$STATE/cni/net.d" "$STATE/cni/ipam"
  kubeconfig_for "$KUBECONFIG_ADMIN" admin
  kubeconfig_for "$CONF/kubelet.kubeconfig" "system:node:$NODE_NAME"
  kubeconfig_for "$CONF/kube-proxy.kubeconfig" system:kube-proxy
  kubeconfig_for "$CONF/controller-manager.kubeconfig" system:kube-controller-manager
  kubeconfig_for "$CONF/scheduler.kubeconfig" system:kube-scheduler
  kubeconfig_for "$CONF/coredns.kubeconfig" waitroom:coredns

  # restrict_oom_score_adj: this VM lacks CAP_SYS_RESOURCE, so a negative oom_score_adj is refused
  # and every sandbox would fail ("can't get final child's PID from pipe: EOF").
  cat >"$CONF/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$STATE/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  # Sandbox network namespaces under the state folder, not /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF

  # One bridge; pods get a route to the Service range only (no default route, no masquerade).
  cat >"$STATE/cni/net.d/10-waitroom.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "waitroom-kube",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    }
  ]
}
EOF

  printf 'nameserver %s\n' "$NODE_IP" >"$CONF/resolv.conf"
  cat >"$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host is cgroup v1 (hybrid); 1.37 refuses v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: "unix://$SOCK"
address: "$NODE_IP"
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: ["$DNS_SERVICE_IP"]
resolvConf: "$CONF/resolv.conf"
# Never garbage-collect the imported images (they cannot be pulled again), never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
# Containers' logs under the state folder too, not /var/log/pods.
podLogsDir: "$STATE/pod-logs"
EOF

  cat >"$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$CONF/kube-proxy.kubeconfig"}
mode: iptables
clusterCIDR: "$CLUSTER_CIDR"
hostnameOverride: "$NODE_NAME"
bindAddress: 127.0.0.1
healthzBindAddress: "127.0.0.1:10256"
metricsBindAddress: "127.0.0.1:10249"
# NodePorts only on the bridge's address, never on the machine's own interfaces.
nodePortAddresses: ["$NODE_IP/32"]
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF

  # CoreDNS as a host process on the bridge's address, behind the kube-dns Service.
  cat >"$CONF/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CONF/coredns.kubeconfig
        pods insecure
    }
    cache 5
}
.:53 {
    bind $NODE_IP
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
}

make_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Nothing from the pods may leave through another interface.
  iptables -C FORWARD -s "$CLUSTER_CIDR" ! -o "$BRIDGE" -m comment --comment "$EGRESS_COMMENT" -j DROP 2>/dev/null ||
    iptables -I FORWARD 1 -s "$CLUSTER_CIDR" ! -o "$BRIDGE" -m comment --comment "$EGRESS_COMMENT" -j DROP
}

pause_image_tar() {  # builds the static pause binary and its image once; prints the tarball's path
  local hash dir
  hash=$(sha256sum "$(dirname "$0")/pause.c" | cut -c1-12)
  dir="$KUBE_DIR/pause-$hash"
  if [ ! -f "$dir/image.tar" ]; then
    rm -rf "$dir.partial" && mkdir -p "$dir.partial"
    gcc -static -O2 -s -o "$dir.partial/pause" "$(dirname "$0")/pause.c"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$dir.partial/Containerfile"
    podman build -q --pull=never -t "$PAUSE_IMAGE" -f "$dir.partial/Containerfile" "$dir.partial" >/dev/null
    podman save -q --format docker-archive -o "$dir.partial/image.tar" "$PAUSE_IMAGE" >/dev/null
    rm -rf "$dir" && mv "$dir.partial" "$dir"
  fi
  echo "$dir/image.tar"
}

# The images pods run: the pause image and every project image podman holds (app, Kafka, moto),
# imported into containerd only when podman's image id differs from the one imported last.
import_images() {
  local t0 tar stamps="$CONTAINERD_ROOT.imported" ref id
  t0=$(now)
  mkdir -p "$stamps"
  tar=$(pause_image_tar)
  if ! ctr_ images ls -q | grep -qx "$PAUSE_IMAGE"; then
    ctr_ images import "$tar" >/dev/null
  fi
  local refs
  refs=$(podman images --format '{{.Repository}}:{{.Tag}} {{.ID}}' |
    awk '$1 ~ /^localhost\/waitroom(-kafka|-moto)?:/ && $1 !~ /:latest$/ {print}')
  [ -n "$refs" ] || log "no project images in podman (make containers builds them)"
  while read -r ref id; do
    [ -n "$ref" ] || continue
    local stamp
    stamp="$stamps/$(printf '%s' "$ref" | tr '/:' '__')"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] && ctr_ images ls -q | grep -qx "$ref"; then
      continue
    fi
    log "importing $ref ($id) into containerd"
    podman save -q --format docker-archive "$ref" | ctr_ images import - >/dev/null
    echo "$id" >"$stamp"
  done <<<"$refs"
  log "images ready in $(since "$t0") s"
}

apply_dns_service() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $DNS_SERVICE_IP
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: waitroom-kube
addressType: IPv4
endpoints:
  - addresses: ["$NODE_IP"]
ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: waitroom:coredns
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects:
  - {kind: User, name: "waitroom:coredns", apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
EOF
}

# --- up ----------------------------------------------------------------------------------------

up() {
  [ "$(id -u)" = 0 ] || die "needs root (containerd, kubelet, iptables, a bridge)"
  if running; then
    log "already running (KUBECONFIG=$KUBECONFIG_ADMIN)"
    return 0
  fi
  if [ -d "$STATE" ]; then
    log "a stopped or half-started cluster is there: taking it down first"
    down
  fi
  local t0 t
  t0=$(now)
  ensure_packages
  ensure_binaries
  [ -x "$COREDNS" ] || die "no CoreDNS at $COREDNS (kube/build.sh coredns)"
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  record_sysctls
  record_host_paths
  make_pki
  write_configs
  make_bridge

  t=$(now)
  start etcd etcd --name waitroom-kube --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "waitroom-kube=http://127.0.0.1:$ETCD_PEER_PORT" \
    --logger zap --log-level warn
  start containerd containerd --config "$CONF/containerd.toml"
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
  wait_for containerd 30 ctr --address "$SOCK" version

  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
    --cert-dir "$STATE/apiserver" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --kubelet-preferred-address-types InternalIP \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --enable-priority-and-fairness=false --profiling=false
  import_images  # while the API server starts
  wait_for kube-apiserver 90 "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz
  log "etcd, containerd, API server up in $(since "$t") s"

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CONF/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  start kubelet "$BIN/kubelet" --config "$CONF/kubelet.yaml" --kubeconfig "$CONF/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet-pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  start kube-proxy "$BIN/kube-proxy" --config "$CONF/kube-proxy.yaml"
  apply_dns_service
  start coredns "$COREDNS" -conf "$CONF/Corefile" -dns.port 53

  wait_for kubelet 90 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  wait_for coredns 60 curl -fsS http://127.0.0.1:18181/ready
  wait_for kube-proxy 60 curl -fsS http://127.0.0.1:10256/healthz
  wait_for kube-controller-manager 60 kubectl get serviceaccount default -n default
  log "up in $(since "$t0") s: export KUBECONFIG=$KUBECONFIG_ADMIN (or: kube/cluster.sh env)"
}

# --- down --------------------------------------------------------------------------------------

# Rules in the built-in chains that jump to KUBE-*/CNI-* chains, then those chains, for both families.
clean_iptables() {
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
      "$ipt" -t "$table" -S | awk '$1 == "-A" && $2 !~ /^(KUBE-|CNI-)/ && / -j (KUBE-|CNI-)/' |
        while read -r line; do
          # shellcheck disable=SC2086 # a rule as iptables -S prints it, re-split on purpose
          eval "\"$ipt\" -t $table ${line/-A /-D }" 2>/dev/null || true
        done
      local chains
      chains=$("$ipt" -t "$table" -S | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}')
      for c in $chains; do "$ipt" -t "$table" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$ipt" -t "$table" -X "$c" 2>/dev/null || true; done
    done
  done
  while iptables -D FORWARD -s "$CLUSTER_CIDR" ! -o "$BRIDGE" -m comment --comment "$EGRESS_COMMENT" -j DROP 2>/dev/null; do :; done
}

# Mount points under the state folder and containerd's store, deepest first.
our_mounts() {
  awk -v a="$STATE" -v b="$CONTAINERD_ROOT" 'index($5, a) == 1 || index($5, b) == 1 {print $5}' \
    /proc/self/mountinfo | sort -r
}

# Processes of the cluster that are not in pids/ (containerd's shims, a daemon whose PID file was
# lost): found by our socket or config folder in their command line, by their binary, or by being
# in the pod cgroups.
stray_pids() {
  local p pid exe
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    if [ "${exe#"$BIN"/}" != "$exe" ] || [ "$exe" = "$COREDNS" ]; then
      echo "$pid"
    elif tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -e "$SOCK" -e "$CONF/containerd.toml" -e "$STATE/etcd"; then
      echo "$pid"
    elif grep -q ':/kubepods' "$p/cgroup" 2>/dev/null; then
      echo "$pid"
    fi
  done
}

down() {
  [ "$(id -u)" = 0 ] || die "needs root"
  [ -d "$STATE" ] || { log "not running"; return 0; }
  local t0 d pid
  t0=$(now)
  # Pods first, while the kubelet can still tear their sandboxes down through CNI.
  if pid_of kubelet >/dev/null && pid_of kube-apiserver >/dev/null; then
    # shellcheck disable=SC2046 # a list of PIDs
    stop_pid $(pid_of kube-controller-manager) $(pid_of kube-scheduler)
    kubectl delete pods --all --all-namespaces --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
    if pid_of containerd >/dev/null; then
      local _
      for _ in $(seq 50); do
        [ -z "$(ctr_ tasks ls -q 2>/dev/null)" ] && break
        sleep 0.2
      done
    fi
  fi
  # The pods are gone: the rest may stop together, but etcd after the API server (which otherwise
  # hangs in its shutdown), containerd last (after what it still runs).
  local pids=()
  for d in "${DAEMONS[@]}"; do
    case "$d" in containerd | etcd) continue ;; esac
    if pid=$(pid_of "$d"); then pids+=("$pid"); fi
  done
  stop_pid "${pids[@]}"
  # shellcheck disable=SC2046 # a list of PIDs
  stop_pid $(pid_of etcd)
  # Whatever the kubelet left: kill the containers' tasks and remove them with their snapshots.
  if pid_of containerd >/dev/null; then
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    sleep 0.5
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
    pid=$(pid_of containerd) && stop_pid "$pid"
  fi
  # shellcheck disable=SC2046 # a list of PIDs
  stop_pid $(stray_pids)
  if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  clean_iptables
  # Every mount of ours, deepest first: the sandboxes' network namespaces (containerd keeps them
  # under its state folder; their veth pairs go with them), volumes, root filesystems.
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  local cg
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$cg" ] || continue
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  restore_sysctls
  clean_host_paths
  if [ -n "$(our_mounts)" ]; then
    die "mounts left under $STATE, not removing it: $(our_mounts | tr '\n' ' ')"
  fi
  rm -rf --one-file-system "$STATE"
  log "down in $(since "$t0") s"
}

status() {
  if running; then
    log "running: export KUBECONFIG=$KUBECONFIG_ADMIN"
  else
    log "not running"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_ADMIN" ;;
  clean)
    down
    rm -rf --one-file-system "$CONTAINERD_ROOT" "$CONTAINERD_ROOT.imported"
    ;;
  *)
    echo "usage: kube/cluster.sh up|down|status|env|clean" >&2
    exit 2
    ;;
esac
