#!/usr/bin/env bash
# Installs the chart and rules checkers the test suite runs, into ~/.cache/akisnap/bin:
#   helm         helm.sh/helm/v3                      (go install, from the Go module proxy)
#   kubeconform  github.com/yannh/kubeconform         (go install)
#   promtool     github.com/prometheus/prometheus     (go install, without the service-discovery
#                                                      plugins its rule checks and tests never
#                                                      use: half the binary, a faster build)
#   minio        github.com/minio/minio               (go install: the second real S3 server
#                                                      the store tests run against; a test
#                                                      service only, never shipped or linked)
# built side by side, and the offline Kubernetes JSON schemas kubeconform validates against,
# made from the kubernetes-validate wheel (PyPI) by tools/make_k8s_schemas.py.
# Cold (empty caches, 2 cores): about 20 minutes (MinIO is the big one). Warm: well under a
# second.
#
# Each tool is skipped only when its binary is there and its stamp file records the same
# version and build flags; anything else is (re)built. Any failure stops the script loudly.
# Nothing is written inside the repository: module cache, build cache and GOPATH all live
# under ~/.cache/akisnap.
#
# Overrides: AKISNAP_CACHE (default ~/.cache/akisnap), PYTHON (default python3).
set -euo pipefail

HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
PROMTOOL_VERSION=v0.316.0
# MinIO tags no semantic versions its module can be fetched by: a pseudo-version of its last
# commit (2026-02-12), pinned.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes releases the chart is validated against (the chart's kubeVersion floor and the
# newest); each must be one the kubernetes-validate wheel ships.
K8S_SCHEMA_VERSIONS=(1.25.0 1.37.0)
# What helm's own release build stamps in (its Makefile, from the k8s.io/client-go it
# requires: v0.37 for helm v3.22): the default .Capabilities.KubeVersion of `helm template`.
# Without it a `go install`ed helm assumes Kubernetes 1.20.
HELM_K8S_MINOR=37

CACHE="${AKISNAP_CACHE:-$HOME/.cache/akisnap}"
BIN="$CACHE/bin"
STAMPS="$BIN/.stamps"
SCHEMAS="$CACHE/kubernetes-json-schema"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "install-go-tools: ERROR: $*" >&2
    exit 1
}
trap 'echo "install-go-tools: FAILED (line $LINENO, exit $?)" >&2' ERR

command -v go >/dev/null 2>&1 || die "'go' is not on PATH; install Go 1.26 (or newer) first"

export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go-build"
export GOBIN="$BIN"
export GOTOOLCHAIN=local
# -modcacherw: the module cache stays deletable with plain rm -rf.
export GOFLAGS="-modcacherw -buildvcs=false"
mkdir -p "$BIN" "$STAMPS" "$GOPATH"

LOGS="$CACHE/logs"
mkdir -p "$LOGS"

# install_tool NAME PACKAGE VERSION VERSION_CMD LDFLAGS [extra go install flags...]
# Prints one line; the go output goes to $LOGS/NAME.log and is shown when it fails.
install_tool() {
    local name="$1" pkg="$2" version="$3" version_cmd="$4" ldflags="$5"
    shift 5
    local stamp="$STAMPS/$name"
    local want="$pkg@$version -trimpath -ldflags=$ldflags $*"
    if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "install-go-tools: $name $version already installed"
        return 0
    fi
    echo "install-go-tools: building $name $version (first time: several minutes)"
    rm -f "$stamp"
    local start=$SECONDS log="$LOGS/$name.log"
    if ! go install -trimpath "-ldflags=$ldflags" "$@" "$pkg@$version" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "go install $pkg@$version failed (full log: $log)"
    fi
    [[ -x "$BIN/$name" ]] || die "$name was not written to $BIN"
    # The binary must run, not just exist.
    # shellcheck disable=SC2086
    "$BIN/$name" $version_cmd >>"$log" 2>&1 || die "$BIN/$name $version_cmd failed (log: $log)"
    printf '%s' "$want" >"$stamp"
    echo "install-go-tools: $name $version built in $((SECONDS - start))s"
}

install_schemas() {
    local stamp="$STAMPS/kubernetes-json-schema"
    local want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION ${K8S_SCHEMA_VERSIONS[*]}"
    want+=" $(sha256sum "$HERE/make_k8s_schemas.py" | cut -c1-16)"
    if [[ -f "$SCHEMAS/versions" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "install-go-tools: Kubernetes ${K8S_SCHEMA_VERSIONS[*]} schemas already installed"
        return 0
    fi
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "'$python' is not on PATH (needed for the schemas)"
    rm -f "$stamp"
    local tmp="$CACHE/tmp/schemas"
    rm -rf "$tmp" "$SCHEMAS"
    mkdir -p "$tmp" "$SCHEMAS"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
        die "could not download kubernetes-validate==$KUBERNETES_VALIDATE_VERSION with pip"
    local wheel version
    wheel="$(ls "$tmp"/kubernetes_validate-*.whl)" || die "pip left no kubernetes-validate wheel"
    for version in "${K8S_SCHEMA_VERSIONS[@]}"; do
        "$python" "$HERE/make_k8s_schemas.py" "$wheel" "$version" "$SCHEMAS" ||
            die "converting the Kubernetes v$version schemas failed"
    done
    # Read by tests/test_chart.py: the releases to validate against, one a line.
    printf '%s\n' "${K8S_SCHEMA_VERSIONS[@]}" >"$SCHEMAS/versions"
    rm -rf "$tmp"
    printf '%s' "$want" >"$stamp"
}

helm_k8s_ldflags() {
    local pkg
    for pkg in pkg/lint/rules pkg/chartutil; do
        printf -- '-X helm.sh/helm/v3/%s.k8sVersionMajor=1 ' "$pkg"
        printf -- '-X helm.sh/helm/v3/%s.k8sVersionMinor=%s ' "$pkg" "$HELM_K8S_MINOR"
    done
}

start=$SECONDS
# The three builds run side by side: a cold build mostly waits on module downloads, and the
# go command locks the shared module and build caches itself.
pids=()
install_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" \
    -v "-s -w" &
pids+=($!)
install_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" version \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION $(helm_k8s_ldflags)" &
pids+=($!)
# remove_all_sd: without the service-discovery plugins (cloud SDKs), which promtool's rule
# checks and tests never use; the build is far smaller.
install_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMTOOL_VERSION" --version \
    "-s -w" -tags=remove_all_sd &
pids+=($!)
install_tool minio github.com/minio/minio "$MINIO_VERSION" --version "-s -w" &
pids+=($!)
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
[[ $failed == 0 ]] || die "building the Go tools failed (see above)"
install_schemas
echo "install-go-tools: ready in $BIN, schemas in $SCHEMAS ($((SECONDS - start))s)"
