#!/usr/bin/env bash
# Fetches the local Kafka broker (KRaft), the Flink Kafka connector and the Prometheus reporter from Maven
# Central into the git-ignored cache (${STREAMREC_CACHE:-<repo>/.cache}).
# Idempotent: a pom is fetched again only when its sha256 differs from the stamp
# written after its last successful fetch.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${STREAMREC_CACHE:-$ROOT/.cache}"

fetch() {  # pom, output dir, globs of the jars this pom owns there (removed before copying)
  local pom="$1" out="$2" stamp="$2/.pom-sha256" hash owned
  shift 2
  hash=$(sha256sum "$pom" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
    echo "up to date: $out"
    return 0
  fi
  mkdir -p "$out"
  rm -f "$stamp"
  # Stale jars of an older pom would otherwise stay on the classpath.
  for owned in "$@"; do find "$out" -maxdepth 1 -name "$owned" -type f -delete; done
  mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$out" -DincludeScope=runtime
  echo "$hash" > "$stamp"
  echo "fetched $(find "$out" -maxdepth 1 -name '*.jar' | wc -l) jars into $out"
}

# kafka/libs belongs to the broker pom alone; flink/lib also holds streamrec-flink.jar
# (scripts/build_java.sh), so only the connector and msgpack-core jars are replaced there.
fetch "$ROOT/deps/kafka/pom.xml" "$CACHE/kafka/libs" '*.jar'
fetch "$ROOT/deps/flink/pom.xml" "$CACHE/flink/lib" 'flink-sql-connector-kafka-*.jar' 'msgpack-core-*.jar'
# Flink's Prometheus reporter, as a plugin folder (FLINK_PLUGINS_DIR=$CACHE/flink/plugins).
fetch "$ROOT/deps/flink-metrics/pom.xml" "$CACHE/flink/plugins/metrics-prometheus" 'flink-metrics-prometheus-*.jar'
