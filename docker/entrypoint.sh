#!/bin/sh
# Shared ENTRYPOINT of every kubetune trainer image (cpu, cpu-ccl, xpu, cuda).
#
#   docker run --rm -v MODEL:/model:ro -v DATA:/data:ro -v OUT:/output IMAGE [train|merge|generate|...] [args]
#
# Everything else is `kubetune` itself: the images set KUBETUNE_CONTAINER=1, which makes the mounts
# /model, /data, /output and /config/config.yaml the lowest-priority defaults (docs/user/containers.md).
set -eu

# A Hugging Face token from a mounted secret file: never baked into an image, never on a command line.
if [ -n "${HF_TOKEN_FILE:-}" ]; then
    if [ ! -r "$HF_TOKEN_FILE" ]; then
        echo "error: HF_TOKEN_FILE=$HF_TOKEN_FILE is not a readable file" >&2
        exit 2
    fi
    HF_TOKEN=$(cat "$HF_TOKEN_FILE")
    export HF_TOKEN
fi

exec kubetune "$@"
