"""A separate process acting on an artifact store, for the store's concurrency tests.

    python -m llmserve.testing.store_worker ACTION URI ARTIFACT_ID OPTIONS_JSON [ARG]

Actions:
- build: publish_once an engine of one file; the build appends a line to the file ARG
  (so a test can count builds across processes), sleeps 1s, and the process prints the
  result as JSON: {"built": ..., "create_time": ...}.
- build-forever: publish_once whose build writes a file, prints "building" and never ends
  (the test kills it).
- hold: takes a hold, prints "held", and sleeps until killed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from llmserve.store import ENGINES, StoreOptions, open_store


def _manifest(artifact_id: str) -> dict[str, object]:
    return {"engine_id": artifact_id, "note": "written by store_worker"}


def main(argv: list[str]) -> int:
    action, uri, artifact_id, options_json = argv[:4]
    store = open_store(uri, StoreOptions(**json.loads(options_json)))
    if action == "build":
        counter = Path(argv[4])

        def build(staging: Path) -> dict[str, object]:
            (staging / "weights.bin").write_bytes(artifact_id.encode() * 1000)
            with counter.open("a") as f:
                f.write("built\n")
            time.sleep(1.0)
            return _manifest(artifact_id)

        manifest, built = store.publish_once(ENGINES, artifact_id, build)
        print(json.dumps({"built": built, "create_time": manifest["create_time"]}), flush=True)
        return 0
    if action == "build-forever":

        def build_forever(staging: Path) -> dict[str, object]:
            (staging / "weights.bin").write_bytes(b"partial" * 1000)
            print("building", flush=True)
            while True:
                time.sleep(60)

        store.publish_once(ENGINES, artifact_id, build_forever)
        return 1
    if action == "hold":
        store.hold(ENGINES, artifact_id)
        print("held", flush=True)
        while True:
            time.sleep(60)
    print(f"unknown action {action!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
