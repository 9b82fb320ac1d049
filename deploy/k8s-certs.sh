#!/usr/bin/env bash
# Makes the certificates of the Kubernetes cluster in deploy/k8s/ with `shale cert` and stores the
# nodes' share in the Secret `shale-tls` (which the StatefulSet mounts on /etc/shale-tls).
#
#   deploy/k8s-certs.sh [--namespace NS] [--replicas N] [--dir DIR] [--client NAME] [--days D] [--no-apply]
#
# DIR (default ./shale-k8s-certs) gets:
#   ca/       ca.pem, ca.key (the cluster CA: keep it off the cluster), node-<id>.pem/.key as made
#   secret/   what the Secret holds, named by pod: ca.pem, shale-<ordinal>.pem, shale-<ordinal>.key
#             (pod shale-<ordinal> is node <ordinal + 1>)
#   client/   ca.pem, client-<NAME>.pem, client-<NAME>.key: the operator's super-user certificate
#             (NAME is `admin` by default, the super-user named in deploy/k8s/00-configmap.yaml)
# Each node certificate names the node (shale://node/<id>), its pod's names under the headless Service
# (shale-<ordinal>.shale-peers[.NS.svc[.cluster.local]]), the client Service (shale, shale.NS.svc, ...)
# and localhost/127.0.0.1 (kubectl port-forward, kubectl exec). Files that exist are kept, so running it
# again (e.g. with more replicas) only adds what is missing; then the Secret is created or replaced with
# `kubectl apply` (unless --no-apply). The `shale` CLI is taken from $SHALE, else from PATH.
set -euo pipefail

namespace=default
replicas=3
dir=./shale-k8s-certs
client=admin
days=365
apply=1
sts=shale
peers=shale-peers
service=shale
secret=shale-tls

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "k8s-certs.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --namespace|-n) namespace="${2:?--namespace needs a value}"; shift 2 ;;
        --replicas) replicas="${2:?--replicas needs a value}"; shift 2 ;;
        --dir) dir="${2:?--dir needs a path}"; shift 2 ;;
        --client) client="${2:?--client needs a name}"; shift 2 ;;
        --days) days="${2:?--days needs a value}"; shift 2 ;;
        --no-apply) apply=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$replicas" =~ ^[1-9][0-9]*$ ]] || die "--replicas must be a positive number, not $replicas"
shale="${SHALE:-$(command -v shale || true)}"
[[ -n "$shale" && -x "$shale" ]] || die "no shale CLI: build it (cargo build -p shale-cli) and set SHALE=path/to/shale"
if [[ $apply -eq 1 ]]; then
    command -v kubectl >/dev/null || die "kubectl is not installed (or pass --no-apply)"
fi

mkdir -p "$dir/ca" "$dir/secret" "$dir/client"
if [[ ! -e "$dir/ca/ca.pem" ]]; then
    "$shale" cert init-ca --dir "$dir/ca" --days "$((days * 10))"
fi
cp "$dir/ca/ca.pem" "$dir/secret/ca.pem"
cp "$dir/ca/ca.pem" "$dir/client/ca.pem"
for ((ordinal = 0; ordinal < replicas; ordinal++)); do
    id=$((ordinal + 1))
    pod="$sts-$ordinal"
    if [[ ! -e "$dir/ca/node-$id.pem" ]]; then
        "$shale" cert node --dir "$dir/ca" --id "$id" --days "$days" \
            --dns "$pod.$peers" --dns "$pod.$peers.$namespace.svc" --dns "$pod.$peers.$namespace.svc.cluster.local" \
            --dns "$service" --dns "$service.$namespace.svc" --dns "$service.$namespace.svc.cluster.local" \
            --dns localhost --ip 127.0.0.1
    fi
    cp "$dir/ca/node-$id.pem" "$dir/secret/$pod.pem"
    cp "$dir/ca/node-$id.key" "$dir/secret/$pod.key"
done
if [[ ! -e "$dir/client/client-$client.pem" ]]; then
    "$shale" cert client --dir "$dir/ca" --principal "$client" --days "$days"
    mv "$dir/ca/client-$client.pem" "$dir/ca/client-$client.key" "$dir/client/"
fi
chmod 0600 "$dir"/secret/*.key "$dir"/client/*.key

if [[ $apply -eq 1 ]]; then
    kubectl create secret generic "$secret" --namespace "$namespace" --from-file="$dir/secret" \
        --dry-run=client -o yaml | kubectl apply -f -
fi
cat <<DONE
Secret $secret: $(cd "$dir/secret" && echo *)
Client files in $dir/client. With the client Service forwarded (kubectl port-forward svc/$service 7001):
  shale profile create k8s --bootstrap 127.0.0.1:7001 --tls-ca $dir/client/ca.pem \\
      --tls-cert $dir/client/client-$client.pem --tls-key $dir/client/client-$client.key --use
  shale cluster status
DONE
