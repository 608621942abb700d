#!/usr/bin/env bash
# The real-cluster flow (make e2e): kind cluster -> images -> chart -> PVCs with the embedded model and
# the example data -> the example FinetuneJob -> Succeeded -> merged model on the volume -> teardown.
# Needs: kind, kubectl, helm, and docker or podman. KEEP_CLUSTER=1 keeps the cluster for a look around.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${KIND_CLUSTER:-kubetune-e2e}
VERSION=${VERSION:-0.1.0}
NS=ml
PY=${PY:-.venv/bin/python}
TMP=$(mktemp -d)

cleanup() {
    rm -rf "$TMP"
    if [ "${KEEP_CLUSTER:-0}" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
step() { echo "==> $*"; }

step "kind cluster $CLUSTER"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s

step "images (cpu trainer, operator) -> kind"
make images BACKEND="cpu operator" VERSION="$VERSION"
kind load docker-image --name "$CLUSTER" "kubetune/trainer:cpu-$VERSION" "kubetune/operator:$VERSION"

step "helm install (chart, CRD, operator)"
helm upgrade --install kubetune charts/kubetune -n kubetune-system --create-namespace \
    --set image.pullPolicy=Never --set operator.pollSeconds=5 --wait --timeout 5m
kubectl get crd finetunejobs.kubetune.dev

step "PVCs, and the model and data copied in"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$NS" -f examples/k8s/pvcs.yaml
kubectl apply -n "$NS" -f examples/k8s/copy-pod.yaml
kubectl wait -n "$NS" pod/kubetune-copy --for=condition=Ready --timeout=300s
.venv/bin/kubetune model export builtin:smollm2-135m-instruct "$TMP/smollm2"
kubectl cp "$TMP/smollm2" "$NS/kubetune-copy:/model/smollm2"
kubectl cp examples/data/dates "$NS/kubetune-copy:/data/dates"

step "the example FinetuneJob (20 steps, to keep CI short)"
"$PY" - <<'PYEOF' | kubectl apply -n "$NS" -f -
import sys, yaml
job = yaml.safe_load(open("examples/k8s/finetunejob-cpu.yaml"))
job["spec"]["training"]["training"]["max_steps"] = 20
job["spec"]["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
yaml.safe_dump(job, sys.stdout)
PYEOF
kubectl get ftj -n "$NS"
if ! kubectl wait -n "$NS" ftj/dates-cpu --for=jsonpath='{.status.phase}'=Succeeded --timeout=1500s; then
    kubectl describe ftj -n "$NS" dates-cpu || true
    kubectl get pods,jobs -n "$NS" -o wide || true
    kubectl logs -n "$NS" -l kubetune.dev/finetunejob=dates-cpu --tail=50 --prefix || true
    kubectl logs -n kubetune-system deploy/kubetune --tail=100 || true
    exit 1
fi
kubectl get ftj -n "$NS" dates-cpu -o jsonpath='{.status.mergedPath}{"\n"}'

step "the merged model is on the output volume"
kubectl exec -n "$NS" kubetune-copy -- ls /runs/dates/merged/config.json /runs/dates/adapter/adapter_config.json
echo "e2e: OK"
