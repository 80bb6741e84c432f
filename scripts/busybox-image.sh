#!/bin/sh
# Make the local test image busybox:local from Debian's busybox-static (no registry here).
set -eu
IMAGE=${IMAGE:-busybox:local}
docker image inspect "$IMAGE" >/dev/null 2>&1 && exit 0
BUSYBOX=$(command -v busybox)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
echo "built $IMAGE"
