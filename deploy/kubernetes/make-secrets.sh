#!/bin/sh
# Creates (or updates) the Secrets and the ConfigMaps that deploy/kubernetes/base expects but does
# not hold, from `remits creds`:
#   remits-creds-<component>  one per component (and `admin` for the setup Job), mounted at /credentials
#   remits-servers            nats-authorization.conf, nats-cluster-routes.conf (the NATS nodes' route
#                             credentials) and redis-users.acl (+ the replica and sentinel users)
#   remits-redis-ha           passwords of those two Redis users (replication, Sentinel)
#   remits-ear-key            the EAR token signing key (gateway, decide, release)
#   remits-join-key           the join service's signing key (join signs, the gateway's JWKS publishes)
#   remits-admin-keys         ConfigMap: the operator's admin public key (provision)
#   remits-join-clusters      ConfigMap: the join service's clusters (REMITS_JOIN_CLUSTERS), from
#                             --join-clusters FILE (kept in DIR; none yet: no cluster, joins refused)
#   remits-se-<dir>           ConfigMaps, only with --se-dir SE_DIR: IBM Secure Execution host key
#                             documents and their chain (SE_DIR/hkds, ca, roots, crls; identity's REMITS_SE_DIR)
#   remits-tenant-audit       ConfigMap: the tenants with an audit reader (--tenant-audit NAME, kept in
#                             DIR), whose history feeds the setup Job creates (docs/tenants.md)
#
#   deploy/kubernetes/make-secrets.sh --admin-key ~/.config/remits/admin.pub.pem [--namespace remits] [--out DIR]
#       [--join-clusters clusters.json] [--se-dir SE_DIR] [--tenant-audit NAME ...]
#
# Everything is kept in DIR (default ./remits-k8s-credentials): a second run reuses it and changes
# nothing, so keep DIR safe (it holds every private key) or delete it once the Secrets exist.
# Needs `remits` (pip install .), kubectl with access to the namespace, openssl and sha256sum.
set -eu

namespace=remits
out=./remits-k8s-credentials
admin_key=""
join_clusters=""
se_dir=""
tenant_audit=""
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --admin-key) admin_key="$2"; shift 2 ;;
    --join-clusters) join_clusters="$2"; shift 2 ;;
    --se-dir) se_dir="$2"; shift 2 ;;
    --tenant-audit) tenant_audit="$tenant_audit $2"; shift 2 ;;
    *) echo "usage: $0 --admin-key PUB.pem [--namespace NS] [--out DIR] [--join-clusters FILE] [--se-dir DIR] [--tenant-audit NAME ...]" >&2; exit 2 ;;
  esac
done
if [ -z "$admin_key" ] || [ ! -f "$admin_key" ]; then
  echo "--admin-key: the public half of \`remits admin keygen\` (PREFIX.pub.pem) is required" >&2
  exit 2
fi
if [ -n "$join_clusters" ] && [ ! -f "$join_clusters" ]; then
  echo "--join-clusters: no such file: $join_clusters" >&2; exit 2
fi
if [ -n "$se_dir" ] && [ ! -d "$se_dir/hkds" ]; then
  echo "--se-dir: $se_dir has no hkds/ (see docs/se.md)" >&2; exit 2
fi

umask 077
mkdir -p "$out"

# 1. Every component's identity (NATS nkey, Redis user, message key; the KEK for provision,
#    release and admin; the SEV and SE session keys for identity), one directory each, and
#    servers/ for NATS and Redis.
#    With --tenant-audit, also each team's audit reader (remits creds checks every name first).
set --
for tenant in $tenant_audit; do set -- "$@" --tenant-audit "$tenant"; done
remits creds --out "$out" --per-component "$@" >/dev/null

apply() { kubectl -n "$namespace" apply -f -; }

for component in gateway intake endorse identity measure decide release provision audit join admin; do
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

# 6. The join service: its signing key (P-256, PKCS#8 PEM; the gateway publishes its public half)
#    and its clusters (docs/clusters.md). Without --join-clusters, the last one given (kept in DIR)
#    or, the first time, none: the join service runs and refuses every join.
[ -f "$out/join-signing-key.pem" ] || \
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/join-signing-key.pem"
kubectl -n "$namespace" create secret generic remits-join-key \
  --from-file=join-signing-key.pem="$out/join-signing-key.pem" --dry-run=client -o yaml | apply
if [ -n "$join_clusters" ]; then
  cp "$join_clusters" "$out/join-clusters.json"
elif [ ! -f "$out/join-clusters.json" ]; then
  echo '{"clusters": {}}' > "$out/join-clusters.json"
fi
kubectl -n "$namespace" create configmap remits-join-clusters \
  --from-file=clusters.json="$out/join-clusters.json" --dry-run=client -o yaml | apply

# 7. IBM Secure Execution (identity's REMITS_SE_DIR, docs/se.md), only with --se-dir: one ConfigMap
#    per subdirectory (a ConfigMap is flat; its files are public documents, read from DIR as they
#    are now, not kept in --out). The identity pods mount them optionally: restart them after a change.
if [ -n "$se_dir" ]; then
  for sub in hkds ca roots crls; do
    if [ -d "$se_dir/$sub" ]; then
      kubectl -n "$namespace" create configmap "remits-se-$sub" \
        --from-file="$se_dir/$sub" --dry-run=client -o yaml | apply
    else
      kubectl -n "$namespace" create configmap "remits-se-$sub" --dry-run=client -o yaml | apply
    fi
  done
fi

# 8. Tenant audit readers (this run's and earlier runs', kept in DIR/all): the setup Job creates each
#    one's history feed (REMITS_TENANT_AUDIT_FEEDS); each team gets DIR/audit-tenant-<name>/ (its seed).
#    NATS must reload remits-servers to accept a new reader: restart the nats pods one at a time.
readers=$(cd "$out/all" && for seed in audit-tenant-*.nk; do if [ -f "$seed" ]; then printf '%s,' "${seed#audit-tenant-}"; fi; done)
readers=$(printf '%s' "$readers" | sed 's/\.nk,/,/g; s/,$//')
kubectl -n "$namespace" create configmap remits-tenant-audit \
  --from-literal=tenants="$readers" --dry-run=client -o yaml | apply
[ -z "$readers" ] || echo "tenant audit readers: $readers (seeds in $out/audit-tenant-<name>/; re-run the setup Job for their feeds)"

echo "Secrets in namespace $namespace are up to date; restart pods that should pick up a change."
