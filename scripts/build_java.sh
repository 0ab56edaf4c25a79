#!/usr/bin/env bash
# Compiles the project's Java classes (Kafka (de)serializers, the event envelope) against the installed
# PyFlink and the fetched connector jar, into the connector cache dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${STREAMREC_CACHE:-$ROOT/.cache}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
# FLINK_LIB: a Flink lib folder to compile against (the Docker build uses the Flink image's); default PyFlink's.
FLINK_LIB="${FLINK_LIB:-$("$PY" -c 'import os, pyflink; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')}"
OUT="$CACHE/flink/lib/streamrec-flink.jar"
SRC=$(find "$ROOT/jobs/java" -name '*.java' | sort)
STAMP="$CACHE/flink/.java-stamp"
HASH=$(cat $SRC | sha256sum | cut -d' ' -f1)
if [[ -f "$OUT" && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then exit 0; fi
CONNECTOR=$(ls "$CACHE"/flink/lib/flink-sql-connector-kafka-*.jar 2>/dev/null | head -1)
MSGPACK=$(ls "$CACHE"/flink/lib/msgpack-core-*.jar 2>/dev/null | head -1)
if [[ -z "$CONNECTOR" || -z "$MSGPACK" ]]; then echo "connector jar missing: run scripts/fetch_deps.sh first" >&2; exit 1; fi
TMP=$(mktemp -d)
javac --release 11 -nowarn -d "$TMP" -cp "$FLINK_LIB/*:$CONNECTOR:$MSGPACK" $SRC
jar cf "$OUT" -C "$TMP" .
rm -rf "$TMP"
echo "$HASH" > "$STAMP"
echo "built $OUT"
