#!/usr/bin/env bash
# Build the local control plane's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok, helm) with `go build` from the Go module proxy, and extract KEDA's
# CRDs and external-scaler proto from the KEDA module. Nothing here is committed: the
# output is cached outside the repo and the build is skipped when it already exists.
#
#   e2e/testbin.sh            build (or reuse) and print the directory
#   KUBEFAL_TESTBIN=/dir      use/produce binaries in /dir instead of the cache
#   e2e/testbin.sh --real-node  also the kubelet (same Kubernetes version) and a static pause
#                               binary, for the opt-in real node (KUBEFAL_TESTBIN_REAL_NODE=1)
#   e2e/testbin.sh --keda       also KEDA's operator and metrics API server (KUBEFAL_TESTBIN_KEDA=1)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
KEY="k8s${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}-keda${KEDA_VERSION}"
OUT=${KUBEFAL_TESTBIN:-$HOME/.cache/kubefal/testbin/$KEY}
BINS="etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm promql-names-$PROMETHEUS_VERSION"
REAL_NODE=${KUBEFAL_TESTBIN_REAL_NODE:-}
[ "${1:-}" = "--real-node" ] && REAL_NODE=1
[ -n "$REAL_NODE" ] && BINS="$BINS kubelet pause"
KEDA=${KUBEFAL_TESTBIN_KEDA:-}
[ "${1:-}" = "--keda" ] && KEDA=1
[ -n "$KEDA" ] && BINS="$BINS keda-operator keda-adapter"

complete() {
  for b in $BINS; do [ -x "$OUT/$b" ] || return 1; done
  [ -s "$OUT/kwok-stages.yaml" ] && [ -s "$OUT/crds/keda.sh_scaledobjects.yaml" ] && [ -s "$OUT/externalscaler.proto" ]
}
if complete; then echo "$OUT"; exit 0; fi
command -v go >/dev/null || { echo "testbin: Go is required (apt-get install golang or use the machine's go)" >&2; exit 1; }

mkdir -p "$OUT/crds"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0
log() { printf '[testbin %s] %s\n' "$(date +%T)" "$*" >&2; }
moddir() { (cd "$WORK" && go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); }

if [ ! -x "$OUT/kube-apiserver" ] || [ ! -x "$OUT/kube-controller-manager" ] || [ ! -x "$OUT/kube-scheduler" ] \
   || { [ -n "$REAL_NODE" ] && [ ! -x "$OUT/kubelet" ]; }; then
  log "kubernetes v$K8S_VERSION"
  mkdir "$WORK/kube" && cd "$WORK/kube"
  printf 'module local/kubefal-testbin\n\ngo 1.26\n\ngodebug default=go1.24\n\nrequire k8s.io/kubernetes v%s\n' "$K8S_VERSION" > go.mod
  KMOD=$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  STAGING=$(sed -n 's#^[[:space:]]*k8s.io/\([a-z0-9-]*\) => \./staging/.*#\1#p' "$KMOD")
  [ -n "$STAGING" ] || { echo "testbin: no staging replaces found in $KMOD" >&2; exit 1; }
  for m in $STAGING; do go mod edit "-replace=k8s.io/$m=k8s.io/$m@v0.${K8S_VERSION#1.}"; done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
  LDF="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDF="$LDF -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for c in kube-apiserver kube-controller-manager kube-scheduler ${REAL_NODE:+kubelet}; do
    [ -x "$OUT/$c" ] && continue
    log "go build $c"
    go build -trimpath -tags=selinux,notest -ldflags "$LDF" -o "$OUT/$c" "k8s.io/kubernetes/cmd/$c"
  done
fi

if [ -n "$REAL_NODE" ] && [ ! -x "$OUT/pause" ]; then
  # The real node's sandbox ("pause") image holds only this: no registry to pull one from.
  log "pause"
  mkdir -p "$WORK/pause" && cd "$WORK/pause"
  printf 'module local/pause\n\ngo 1.26\n' > go.mod
  cat > main.go <<'GO'
// Command pause sleeps until SIGTERM or SIGINT: the sandbox process of a real node's pods.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
GO
  go build -trimpath -ldflags "-s -w" -o "$OUT/pause" .
fi

if [ ! -x "$OUT/etcd" ]; then
  log "etcd v$ETCD_VERSION"
  mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
  printf 'module local/etcd-testbin\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
fi

if [ ! -x "$OUT/kwok" ]; then
  log "kwok v$KWOK_VERSION"
  mkdir -p "$WORK/kwok" && cd "$WORK/kwok"
  printf 'module local/kwok-testbin\n\ngo 1.26\n\nrequire sigs.k8s.io/kwok v%s\n' "$KWOK_VERSION" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/kwok/cmd/kwok"\n' > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath -ldflags "-s -w" -o "$OUT/kwok" sigs.k8s.io/kwok/cmd/kwok
fi
KWOK_DIR=$(moddir "sigs.k8s.io/kwok@v$KWOK_VERSION")
S=$KWOK_DIR/kustomize/stage
{ for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cat "$S/$f"; printf '\n---\n'; done; } > "$OUT/kwok-stages.yaml"

if [ ! -x "$OUT/helm" ]; then
  log "helm v$HELM_VERSION"
  mkdir -p "$WORK/helm" && cd "$WORK/helm"
  printf 'module local/helm-testbin\n\ngo 1.26\n\nrequire helm.sh/helm/v3 v%s\n' "$HELM_VERSION" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v3/cmd/helm"\n' > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath -ldflags "-s -w" -o "$OUT/helm" helm.sh/helm/v3/cmd/helm
fi

if [ ! -x "$OUT/promql-names-$PROMETHEUS_VERSION" ]; then
  # Prometheus's own PromQL parser: the chart's alerts and dashboard queries must parse, and
  # the metric names they select are checked against the real /metrics (e2e/test_monitoring.py).
  log "promql-names (prometheus v$PROMETHEUS_VERSION parser)"
  mkdir -p "$WORK/promql" && cd "$WORK/promql"
  printf 'module local/promql-names\n\ngo 1.24\n' > go.mod
  cp "$HERE/promql-names.go" main.go
  # Only the parser's packages (124 MB of modules; `go mod tidy` would fetch 690 MB).
  go get "github.com/prometheus/prometheus/promql/parser@v$PROMETHEUS_VERSION" >/dev/null 2>&1
  go build -trimpath -ldflags "-s -w" -o "$OUT/promql-names-$PROMETHEUS_VERSION" .
fi

log "KEDA v$KEDA_VERSION CRDs and external scaler proto"
KEDA_DIR=$(moddir "github.com/kedacore/keda/v2@v$KEDA_VERSION")
if [ -n "$KEDA" ] && { [ ! -x "$OUT/keda-operator" ] || [ ! -x "$OUT/keda-adapter" ]; }; then
  # KEDA builds as the main module (its go.mod pins its Kubernetes libraries). Two of its
  # dependencies are refused by the module proxy (newrelic-client-go, swo-sdk-go): their
  # scalers are replaced by constructors that return an error.
  log "KEDA v$KEDA_VERSION operator and metrics API server"
  cp -r "$KEDA_DIR" "$WORK/keda" && chmod -R u+w "$WORK/keda" && cd "$WORK/keda"
  rm pkg/scalers/newrelic_scaler.go pkg/scalers/solarwinds_scaler.go
  cat > pkg/scalers/kubefal_unavailable_scalers.go <<'GO'
package scalers

import (
	"errors"

	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
)

// NewNewRelicScaler is unavailable in this build (its client module cannot be fetched).
func NewNewRelicScaler(config *scalersconfig.ScalerConfig) (Scaler, error) {
	return nil, errors.New("the newrelic scaler is not built into this KEDA")
}

// NewSolarWindsScaler is unavailable in this build (its client module cannot be fetched).
func NewSolarWindsScaler(config *scalersconfig.ScalerConfig) (Scaler, error) {
	return nil, errors.New("the solarwinds scaler is not built into this KEDA")
}
GO
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath -ldflags "-s -w" -o "$OUT/keda-operator" ./cmd/operator
  go build -trimpath -ldflags "-s -w" -o "$OUT/keda-adapter" ./cmd/adapter
  mkdir -p "$OUT/crds-eventing"
  cp "$KEDA_DIR"/config/crd/bases/eventing.keda.sh_*.yaml "$OUT/crds-eventing/"
fi
cp "$KEDA_DIR"/config/crd/bases/keda.sh_*.yaml "$OUT/crds/"
cp "$KEDA_DIR"/pkg/scalers/externalscaler/externalscaler.proto "$OUT/externalscaler.proto"
chmod -R u+w "$OUT"
complete || { echo "testbin: incomplete output in $OUT" >&2; exit 1; }
log "done"
echo "$OUT"
