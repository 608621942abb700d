"""The FinetuneJob's condition types and reasons: one constant each, with what it means.

The operator writes only these (status.conditions[].type/reason, status.phase's Events); docs list them
from `CONDITION_TYPES` and `REASONS` (like Kubeflow Trainer's trainjob_types.go). A Failed reason may also
be the Job controller's own, passed through from the worker Job's Failed condition (`JOB_REASONS`), and
Running=False may carry the kubelet's or scheduler's reason for a pod that waits (`POD_WAITING_REASONS`).
"""

from __future__ import annotations

CONDITION_TYPES: dict[str, str] = {}
REASONS: dict[str, str] = {}


def _type(name: str, meaning: str) -> str:
    CONDITION_TYPES[name] = meaning
    return name


def _reason(name: str, meaning: str) -> str:
    REASONS[name] = meaning
    return name


# --- condition types, in the order status lists them -------------------------------------------------------
CREATED = _type("Created", "The children (ConfigMap, Service, Jobs) were created, or why they could not be.")
INITIALIZED = _type(
    "Initialized", "The initializer fetched the remote sources into the cache (spec.sources) and planned the run."
)
RUNNING = _type("Running", "Worker pods are running (not merely pending).")
SUCCEEDED = _type("Succeeded", "Training (and the merge, when enabled) finished.")
FAILED = _type("Failed", "The job failed and will not be retried; the reason says why.")
SUSPENDED = _type("Suspended", "runPolicy.suspend stopped the workers; checkpoints are kept.")
RECONCILE_ERROR = _type(
    "ReconcileError", "The operator's last pass raised an error that is not an API refusal; retried every poll."
)

# --- reasons: creation --------------------------------------------------------------------------------------
CHILDREN_CREATED = _reason("ChildrenCreated", "Created=True: the ConfigMap, Service and first Job exist.")
CREATED_PHASE = _reason("Created", "Event: the FinetuneJob moved to Pending after its children were created.")
FORBIDDEN = _reason(
    "Forbidden", "Created=False: the API server answered 403 (RBAC, quota, admission); retried every poll."
)
INVALID = _reason("Invalid", "Failed: the API server refused a child as invalid (400/422), with its message.")
CREATE_REFUSED = _reason("CreateRefused", "Failed: the API server refused a child for another permanent reason.")
INVALID_SPEC = _reason(
    "InvalidSpec",
    "Failed: the spec or the name breaks a rule; every problem is listed. Also the initializer's exit 2: the "
    "trainer refused the run's config, a flag or a source location, in its own line naming the field.",
)
NOT_ALLOWED = _reason(
    "NotAllowed",
    "Failed: the spec asks for what the operator's policy forbids (an image, a Secret, a priority class, a "
    "toleration, remote code); every problem names its field and the chart's policy value.",
)
NAME_CONFLICT = _reason("NameConflict", "Failed: an object with a child's name exists and is someone else's.")
WAITING_FOR_CLEANUP = _reason(
    "WaitingForCleanup", "Pending: a deleted FinetuneJob of this name still has children being garbage-collected."
)

# --- reasons: remote sources (the initializer Job) ----------------------------------------------------------
INITIALIZING = _reason("Initializing", "Event: the initializer Job was created and fetches the sources.")
FETCHING = _reason("Fetching", "Initialized=False: the initializer is fetching the listed sources.")
SOURCE_NOT_FOUND = _reason("SourceNotFound", "Failed: a source does not exist at its location.")
SOURCE_ACCESS_DENIED = _reason("SourceAccessDenied", "Failed: the credentials may not read a source.")
SOURCE_TRANSFER_FAILED = _reason("SourceTransferFailed", "Failed: a transfer broke off after its retries.")
INITIALIZER_FAILED = _reason("InitializerFailed", "Failed: the initializer failed for another reason.")
PLANNING = _reason("Planning", "Initialized=False: the initializer reads the config and the data and plans the run.")
PLANNED = _reason("Planned", "Initialized=True: the sources are in place and the plan is in status.plan.")
NO_PLAN = _reason(
    "NoPlan",
    "Initialized=True: the initializer finished without a plan (a model the plan cannot build, or an accelerator "
    "backend, whose CPU plan is advice only); the workers get spec.resources or the backend's defaults. An image "
    "older than the preflight does not get here: its `kubetune plan` refuses --preflight (exit 2, InvalidSpec).",
)
INVALID_DATA = _reason("InvalidData", "Failed: the initializer found a bad data file or record (exit 3).")
INVALID_MODEL = _reason("InvalidModel", "Failed: the initializer could not read the model's config (exit 4).")
INSUFFICIENT_MEMORY = _reason(
    "InsufficientMemory",
    "Failed: the plan's peak memory per worker is above spec.resources.limits.memory; the message gives both and "
    "the largest training.batch_size that fits. No worker pod was created. Never with training.ignore_plan.",
)

# --- reasons: running ---------------------------------------------------------------------------------------
WORKERS_RUNNING = _reason("WorkersRunning", "Running=True: this many worker pods run.")
RUNNING_PHASE = _reason("Running", "Event: the first worker pod started.")
QUEUED = _reason("Queued", "Pending: the worker Job waits for admission by its Kueue LocalQueue.")
SUSPENDED_REASON = _reason("Suspended", "Suspended=True / Running=False: runPolicy.suspend is true.")
RESUMED = _reason("Resumed", "Suspended=False: runPolicy.suspend went back to false; training resumes.")
WORKER_RESTARTED = _reason("WorkerRestarted", "Event: a worker index got a new pod (preempted, evicted, retried).")
FAILED_CREATE = _reason(
    "FailedCreate",
    "Running=False: the Job controller cannot create a Job's pods (ResourceQuota, LimitRange, a missing "
    "PriorityClass, a policy engine); the message is its Event's. Retried by the Job controller.",
)
DEADLINE_EXCEEDED = _reason("DeadlineExceeded", "Failed: runPolicy.activeDeadlineSeconds passed.")
WORKERS_FAILED = _reason("WorkersFailed", "Failed: the worker Job failed without a reason of its own.")

# --- reasons: finishing -------------------------------------------------------------------------------------
TRAINING_SUCCEEDED = _reason("TrainingSucceeded", "Running=False: training finished; the merge follows if enabled.")
MERGE_FAILED = _reason("MergeFailed", "Failed: the merge Job failed.")
SUCCEEDED_REASON = _reason("Succeeded", "Succeeded=True: the adapter (and merged model) are written.")
TTL_EXPIRED = _reason("TTLExpired", "Event: runPolicy.ttlSecondsAfterFinished passed; the children were deleted.")

# The Job controller's reasons a worker Job's Failed condition may carry, passed through as the FinetuneJob's.
JOB_REASONS: dict[str, str] = {
    "BackoffLimitExceeded": "Failed: worker pods failed more than runPolicy.backoffLimit times.",
    "PodFailurePolicy": "Failed: a worker exited with a permanent exit code (bad config, data or model).",
    "DeadlineExceeded": "Failed: the worker Job's own activeDeadlineSeconds passed.",
}

# The kubelet's and scheduler's reasons a worker pod may wait with (Running=False, status.message, and a Warning
# Event): passed through, since they name what to fix. Others (ContainerCreating) are shown, without an Event.
POD_WAITING_REASONS: dict[str, str] = {
    "Unschedulable": "No node fits the pod (resources, node selector, taints); the scheduler's message says why.",
    "ErrImagePull": "The image could not be pulled (name, tag, registry credentials).",
    "ImagePullBackOff": "The image pull keeps failing; the kubelet retries with a back-off.",
    "InvalidImageName": "The image reference does not parse.",
    "CreateContainerConfigError": "A Secret or ConfigMap the pod references is missing (hfTokenSecret, S3 keys).",
    "CreateContainerError": "The runtime could not create the container.",
}
