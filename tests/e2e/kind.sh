#!/usr/bin/env bash
# The real-cluster flow (make e2e), as README's walk-through does it: kind cluster -> images -> chart with
# two operator replicas (peering) -> PVCs with the embedded model and the example data -> the example
# FinetuneJob with integer quantities, plus one whose name is at the 63-character limit -> Succeeded ->
# two nodes suspended and resumed -> Succeeded; a missing image stays Initializing with the kubelet's reason ->
# merged model on the volume -> a FinetuneJob deleted with the operator scaled to zero -> helm uninstall.
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

step "helm install (chart, CRD, operator serving $NS: a Role there, no cluster-wide right)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install kubetune charts/kubetune -n kubetune-system --create-namespace \
    --set image.pullPolicy=Never --set operator.pollSeconds=5 --set replicaCount=2 \
    --set "watch.namespaces={$NS}" --set 'policy.images={kubetune/trainer:*}' --wait --timeout 5m
kubectl get crd finetunejobs.kubetune.dev
SA=system:serviceaccount:kubetune-system:kubetune
[ "$(kubectl auth can-i create jobs --as=$SA -n "$NS")" = yes ]
[ "$(kubectl auth can-i create jobs --as=$SA -n kube-system || true)" = no ]

step "PVCs, and the model and data copied in"
kubectl apply -n "$NS" -f examples/k8s/pvcs.yaml
kubectl apply -n "$NS" -f examples/k8s/copy-pod.yaml
kubectl wait -n "$NS" pod/kubetune-copy --for=condition=Ready --timeout=300s
.venv/bin/kubetune model export builtin:smollm2-135m-instruct "$TMP/smollm2"
kubectl cp "$TMP/smollm2" "$NS/kubetune-copy:/model/smollm2"
kubectl cp examples/data/dates "$NS/kubetune-copy:/data/dates"
kubectl delete -n "$NS" pod kubetune-copy --wait  # ReadWriteOnce claims: free them for the workers

step "the example FinetuneJob (20 steps, to keep CI short) and one named at the limit (2 steps, no merge)"
LONG=$(printf 'l%.0s' $(seq 1 63))
"$PY" - "$LONG" <<'PYEOF' | kubectl apply -n "$NS" -f -
import sys, yaml
job = yaml.safe_load(open("examples/k8s/finetunejob-cpu.yaml"))
job["spec"]["training"]["training"]["max_steps"] = 20
# An integer quantity, as users write them: the operator's client must send it as a string (issue 21).
job["spec"]["resources"] = {"requests": {"cpu": 1, "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
long = yaml.safe_load(yaml.safe_dump(job))
long["metadata"]["name"] = sys.argv[1]
long["spec"]["training"]["training"]["max_steps"] = 2
long["spec"]["merge"] = {"enabled": False}
long["spec"]["storage"]["output"]["subPath"] = "long"
yaml.safe_dump_all([job, long], sys.stdout)
PYEOF
if REFUSAL=$(kubectl apply -n "$NS" --dry-run=server -f - 2>&1 <<YAMLEOF
apiVersion: kubetune.dev/v1alpha1
kind: FinetuneJob
metadata: {name: "1-${LONG}"}
spec: {storage: {model: {claimName: models}, data: {claimName: data}, output: {claimName: runs}}}
YAMLEOF
); then echo "the API server admitted a name its children could not have" >&2; exit 1; fi
# Refused for the name (the CRD's CEL rule, finetunejob.NAME_MESSAGE), not for anything else.
if ! grep -q "metadata.name must be at most 63 characters" <<<"$REFUSAL"; then
    echo "refused, but not for its name: $REFUSAL" >&2; exit 1
fi
kubectl get ftj -n "$NS"
if ! kubectl wait -n "$NS" ftj/dates-cpu --for=jsonpath='{.status.phase}'=Succeeded --timeout=1500s; then
    kubectl describe ftj -n "$NS" dates-cpu || true
    kubectl get pods,jobs -n "$NS" -o wide || true
    kubectl logs -n "$NS" -l kubetune.dev/finetunejob=dates-cpu --tail=50 --prefix || true
    kubectl logs -n kubetune-system deploy/kubetune --tail=100 || true
    exit 1
fi
kubectl get ftj -n "$NS" dates-cpu -o jsonpath='{.status.mergedPath}{"\n"}'
kubectl wait -n "$NS" "ftj/$LONG" --for=jsonpath='{.status.phase}'=Succeeded --timeout=900s

step "two nodes, suspended mid-training and resumed -> Succeeded; an image that is not there stays Initializing"
"$PY" - <<'PYEOF' | kubectl apply -n "$NS" -f -
import sys, yaml
job = yaml.safe_load(open("examples/k8s/finetunejob-cpu.yaml"))
two = yaml.safe_load(yaml.safe_dump(job))
two["metadata"]["name"] = "two-nodes"
two["spec"]["nodes"] = 2
two["spec"]["training"]["training"].update(max_steps=12, save_steps=2)
two["spec"]["merge"] = {"enabled": False}
two["spec"]["storage"]["output"]["subPath"] = "two-nodes"
missing = yaml.safe_load(yaml.safe_dump(job))
missing["metadata"]["name"] = "missing-image"
missing["spec"]["image"] = "kubetune/trainer:not-there"  # allowed by policy.images, on no registry
missing["spec"]["storage"]["output"]["subPath"] = "missing"
yaml.safe_dump_all([two, missing], sys.stdout)
PYEOF
until [ "$(kubectl get ftj -n "$NS" two-nodes -o jsonpath='{.status.progress.step}')" -ge 3 ] 2>/dev/null; do
    [ "$(kubectl get ftj -n "$NS" two-nodes -o jsonpath='{.status.phase}')" != Failed ] || exit 1
    sleep 5
done
kubectl patch ftj -n "$NS" two-nodes --type merge -p '{"spec":{"runPolicy":{"suspend":true}}}'
kubectl wait -n "$NS" ftj/two-nodes --for=jsonpath='{.status.phase}'=Suspended --timeout=600s
kubectl patch ftj -n "$NS" two-nodes --type merge -p '{"spec":{"runPolicy":{"suspend":false}}}'
kubectl wait -n "$NS" ftj/two-nodes --for=jsonpath='{.status.phase}'=Succeeded --timeout=1500s
for _ in $(seq 60); do  # the kubelet's reason reaches status.message (issue 21 #4)
    kubectl get ftj -n "$NS" missing-image -o jsonpath='{.status.message}' | grep -Eq 'ErrImagePull|ImagePullBackOff' && break
    sleep 5
done
kubectl get ftj -n "$NS" missing-image -o jsonpath='{.status.message}' | grep -Eq 'ErrImagePull|ImagePullBackOff'
[ "$(kubectl get ftj -n "$NS" missing-image -o jsonpath='{.status.phase}')" = Initializing ]
kubectl delete -n "$NS" ftj missing-image --timeout=60s

step "the merged model is on the output volume"
kubectl apply -n "$NS" -f examples/k8s/copy-pod.yaml
kubectl wait -n "$NS" pod/kubetune-copy --for=condition=Ready --timeout=300s
kubectl exec -n "$NS" kubetune-copy -- ls /runs/dates/merged/config.json /runs/dates/adapter/adapter_config.json

step "no finalizer: a FinetuneJob goes while no operator runs, and helm uninstall leaves nothing stuck"
kubectl scale -n kubetune-system deploy/kubetune --replicas=0
kubectl delete -n "$NS" ftj dates-cpu --timeout=60s
helm uninstall kubetune -n kubetune-system --wait
kubectl delete -n "$NS" ftj --all --timeout=60s
echo "e2e: OK"
