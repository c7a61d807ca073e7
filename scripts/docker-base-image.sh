#!/usr/bin/env bash
# Creates the base image the node image builds FROM, without a registry: a root filesystem
# holding this machine's own `node` binary and the shared libraries it loads, plus an
# unprivileged user (kv, uid 10001) and /data, imported with `docker import`.
#
# Where a registry can be reached, skip this: deploy/Dockerfile uses the official
# node:20-bookworm-slim image unchanged unless BASE_IMAGE says otherwise.
#
#   bash scripts/docker-base-image.sh [IMAGE]     (default kvstore/node-base:local)
set -euo pipefail
image="${1:-kvstore/node-base:local}"
node_bin="$(readlink -f "$(command -v node)")"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{usr/local/bin,etc,tmp,data,app,lib64,lib/x86_64-linux-gnu}
chmod 1777 "$root/tmp"
cp "$node_bin" "$root/usr/local/bin/node"
# Every library node loads, at the path the dynamic loader looks for it.
ldd "$node_bin" | awk '/=>/ { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
  [ -f "$lib" ] || continue
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# classic-level's prebuilt LevelDB addon needs the C++ runtime node already brings; name
# resolution (for peers named by container hostname) needs NSS's files and dns modules.
for lib in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_dns.so.2 \
  /lib/x86_64-linux-gnu/libresolv.so.2; do
  [ -f "$lib" ] && cp -L "$lib" "$root$lib"
done
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
kv:x:10001:10001:kvstore:/app:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
kv:x:10001:
GROUP
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
chown 10001:10001 "$root/data"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'WORKDIR /app' \
  - "$image" >/dev/null
docker run --rm "$image" node -e 'console.log(`base image ${process.argv[1]}: node ${process.version}`)' "$image"
