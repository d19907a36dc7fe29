#!/bin/sh
# Offline check of the Kubernetes manifests (deploy/kubernetes): renders them with
# `kubectl kustomize` (no cluster is contacted) and validates every object, and
# adopt-job.example.yaml, against the Kubernetes API schemas with validate.mjs (npm
# packages kubernetes-models, @kubernetes-models/prometheus-operator, yaml; pinned in
# package-lock.json). About 1 s once the node modules are installed.
#
#   tests/kubernetes/run.sh                installs the node modules first when they are
#                                          missing or older than package-lock.json (npm ci,
#                                          about 10 s), then checks
#   tests/kubernetes/run.sh --install-only only that install (scripts/test runs it once)
#   tests/kubernetes/run.sh --no-install   never runs npm (ctest): fails when the modules
#                                          are missing or outdated
#
# Prints "SKIPPED: <reason>" and exits 0 when kubectl (Debian: kubernetes-client), node or
# npm is missing. Exits non-zero on any failure.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
install=1
check=1
for arg in "$@"; do
    case $arg in
        --no-install) install=0 ;;
        --install-only) check=0 ;;
        *) echo "usage: $0 [--no-install | --install-only]" >&2; exit 2 ;;
    esac
done

tools="node npm"
[ "$check" = 0 ] || tools="kubectl $tools"
for tool in $tools; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        case $tool in
            kubectl) pkg="kubernetes-client" ;;
            *) pkg="nodejs npm" ;;
        esac
        echo "SKIPPED: $tool not found (Debian: apt-get install $pkg)"
        exit 0
    fi
done

# npm ci writes node_modules/.package-lock.json; older than the lock file means outdated.
if [ ! -f "$here/node_modules/.package-lock.json" ] \
    || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ] \
    || [ "$here/package.json" -nt "$here/node_modules/.package-lock.json" ]; then
    if [ "$install" = 0 ]; then
        echo "tests/kubernetes: node modules missing or older than package-lock.json;" \
            "run: npm ci --prefix tests/kubernetes --no-audit --no-fund" >&2
        exit 1
    fi
    echo "tests/kubernetes: npm ci (pinned by package-lock.json)"
    if ! timeout 300 npm ci --prefix "$here" --no-audit --no-fund --loglevel=error; then
        echo "tests/kubernetes: npm ci failed" >&2
        exit 1
    fi
fi
[ "$check" = 1 ] || exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

if ! timeout 60 kubectl kustomize "$root/deploy/kubernetes" >"$work/rendered.yaml" 2>"$work/kustomize.err"; then
    echo "FAIL kubectl kustomize deploy/kubernetes:" >&2
    cat "$work/kustomize.err" >&2
    exit 1
fi
# Newer kustomize warns that commonLabels is deprecated; the file keeps it so that Debian
# 12's kubectl (kustomize v2.0.3, which has no `labels:`) renders it too.
grep -v "'commonLabels' is deprecated" "$work/kustomize.err" >&2 || true
echo "rendered with $(kubectl version --client 2>/dev/null | head -n 1)"

timeout 60 node "$here/validate.mjs" --repo "$root" --rendered "$work/rendered.yaml" \
    --extra "$root/deploy/kubernetes/adopt-job.example.yaml"
