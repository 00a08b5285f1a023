#!/bin/sh
# Creates (or updates) the Secrets and the ConfigMap that deploy/kubernetes/base expects but does
# not hold, from `remits creds`:
#   remits-creds-<component>  one per component (and `admin` for the setup Job), mounted at /credentials
#   remits-servers            nats-authorization.conf, nats-cluster-routes.conf (the NATS nodes' route
#                             credentials) and redis-users.acl (+ the replica and sentinel users)
#   remits-redis-ha           passwords of those two Redis users (replication, Sentinel)
#   remits-ear-key            the EAR token signing key (gateway, decide, release)
#   remits-admin-keys         ConfigMap: the operator's admin public key (provision)
#
#   deploy/kubernetes/make-secrets.sh --admin-key ~/.config/remits/admin.pub.pem [--namespace remits] [--out DIR]
#
# Everything is kept in DIR (default ./remits-k8s-credentials): a second run reuses it and changes
# nothing, so keep DIR safe (it holds every private key) or delete it once the Secrets exist.
# Needs `remits` (pip install .), kubectl with access to the namespace, openssl and sha256sum.
set -eu

namespace=remits
out=./remits-k8s-credentials
admin_key=""
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --admin-key) admin_key="$2"; shift 2 ;;
    *) echo "usage: $0 --admin-key PUB.pem [--namespace NS] [--out DIR]" >&2; exit 2 ;;
  esac
done
if [ -z "$admin_key" ] || [ ! -f "$admin_key" ]; then
  echo "--admin-key: the public half of \`remits admin keygen\` (PREFIX.pub.pem) is required" >&2
  exit 2
fi

umask 077
mkdir -p "$out"

# 1. Every component's identity (NATS nkey, Redis user, message key; the KEK for provision,
#    release and admin), one directory each, and servers/ for NATS and Redis.
remits creds --out "$out" --per-component >/dev/null

apply() { kubectl -n "$namespace" apply -f -; }

for component in gateway intake endorse identity measure decide release provision audit admin; do
  kubectl -n "$namespace" create secret generic "remits-creds-$component" \
    --from-file="$out/$component" --dry-run=client -o yaml | apply
done

# 2. Redis replication and Sentinel users, appended to the ACL file `remits creds` wrote.
mkdir -p "$out/redis-ha"
for user in replica sentinel; do
  # No trailing newline: the value goes into the ACL hash and, through an env var, into the configs.
  [ -f "$out/redis-ha/$user-password" ] || openssl rand -hex 32 | tr -d '\n' > "$out/redis-ha/$user-password"
done
hash() { sha256sum < "$1" | cut -d' ' -f1; }
cp "$out/servers/redis-users.acl" "$out/redis-ha/redis-users.acl"
{
  echo "user replica on #$(hash "$out/redis-ha/replica-password") resetkeys resetchannels -@all +psync +replconf +ping"
  echo "user sentinel on #$(hash "$out/redis-ha/sentinel-password") resetkeys allchannels -@all +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill"
} >> "$out/redis-ha/redis-users.acl"

# 3. The NATS cluster's routes, authenticated by one password the three nodes share.
[ -f "$out/nats-route-password" ] || openssl rand -hex 32 | tr -d '\n' > "$out/nats-route-password"
route_password=$(cat "$out/nats-route-password")
{
  echo "authorization { user: route, password: \"$route_password\" }"
  echo "routes: ["
  for node in 0 1 2; do echo "  nats://route:$route_password@nats-$node.nats:6222"; done
  echo "]"
} > "$out/nats-cluster-routes.conf"

kubectl -n "$namespace" create secret generic remits-servers \
  --from-file=nats-authorization.conf="$out/servers/nats-authorization.conf" \
  --from-file=nats-cluster-routes.conf="$out/nats-cluster-routes.conf" \
  --from-file=redis-users.acl="$out/redis-ha/redis-users.acl" --dry-run=client -o yaml | apply
kubectl -n "$namespace" create secret generic remits-redis-ha \
  --from-file=replica-password="$out/redis-ha/replica-password" \
  --from-file=sentinel-password="$out/redis-ha/sentinel-password" --dry-run=client -o yaml | apply

# 4. The EAR signing key (P-256, PKCS#8 PEM): shared by decide (signs), release and the gateway.
[ -f "$out/ear-signing-key.pem" ] || \
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/ear-signing-key.pem"
kubectl -n "$namespace" create secret generic remits-ear-key \
  --from-file=ear-signing-key.pem="$out/ear-signing-key.pem" --dry-run=client -o yaml | apply

# 5. The admin public key the provision component accepts (REMITS_ADMIN_KEYS).
kubectl -n "$namespace" create configmap remits-admin-keys \
  --from-file=operator.pub.pem="$admin_key" --dry-run=client -o yaml | apply

echo "Secrets in namespace $namespace are up to date; restart pods that should pick up a change."
