#!/usr/bin/env bash
# Build pynet as a Docker managed plugin and install it into the local dockerd.
#
#   scripts/build-plugin.sh [--no-enable] NAME TAG [KEY=VALUE ...]
#   scripts/build-plugin.sh --remove NAME TAG
#
# The rootfs is Debian (debootstrap minbase, from the mirror the host's apt already uses) plus
# a venv holding pynet and its wheels. The base is cached as a tar in PYNET_PLUGIN_CACHE
# (default /var/cache/pynet-plugin; delete it to pick up Debian updates), so only the first
# build needs debootstrap. Nothing is written into the checkout. KEY=VALUE pairs are applied
# with `docker plugin set` before the first enable, so the plugin never runs with settings
# it was not meant to have (tests point PYNET_NAME and PYNET_STATE_DIR elsewhere this way).
# A rebuild replaces the plugin of that name and keeps the settings changed on it; a NAME
# other than pynet gets its own instance name and state dir (/var/lib/NAME) by default.
#
# Environment: PYNET_PLUGIN_CACHE, PYNET_PLUGIN_MIRROR (overrides the apt sources),
# PYNET_PLUGIN_SUITE (default bookworm: its python3 is the cp311 the wheels are chosen for).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PYNET_PLUGIN_CACHE:-/var/cache/pynet-plugin}
SUITE=${PYNET_PLUGIN_SUITE:-bookworm}
PYVER=3.11
INCLUDE=python3,python3-venv,iptables,libnftables1
# Debian's 20.10 client when present: it speaks the daemon's API natively (reference P13).
DOCKER=$([ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker)

usage() {
    echo "usage: $0 [--no-enable] NAME TAG [KEY=VALUE ...] | $0 --remove NAME TAG" >&2
    exit 2
}

step_start=$SECONDS
step() {  # step NAME: print how long the previous step took, start timing the next one
    echo "build-plugin: $1 ($((SECONDS - step_start))s)" >&2
    step_start=$SECONDS
}

# The first URI the host's apt sources give for "deb ... $SUITE": one-line .list files and
# deb822 .sources files both. A mirror is a property of the host, so it is read here at run
# time and never written into the repository.
host_mirror() {
    local f deb822
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
             /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        deb822=0
        [[ $f == *.sources ]] && deb822=1
        awk -v suite="$SUITE" -v deb822="$deb822" '
            function has(list, word,   n, i, parts) {
                n = split(list, parts, /[ \t]+/)
                for (i = 1; i <= n; i++) if (parts[i] == word) return 1
                return 0
            }
            function emit(   parts) {
                if (enabled != "no" && has(types, "deb") && has(suites, suite)) {
                    split(uris, parts, /[ \t]+/)
                    print parts[1]
                }
                types = suites = uris = enabled = ""
            }
            deb822 && /^[ \t]*#/ { next }
            deb822 && /^[ \t]*$/ { emit(); next }
            deb822 {
                key = $0; sub(/:.*/, "", key); key = tolower(key)
                value = $0; sub(/^[^:]*:[ \t]*/, "", value)
                if (key == "types") types = value
                else if (key == "uris") uris = value
                else if (key == "suites") suites = value
                else if (key == "enabled") enabled = tolower(value)
                next
            }
            {
                sub(/#.*/, "")
                if ($1 != "deb") next
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) print $i
            }
            END { if (deb822) emit() }
        ' "$f"
    done | grep -E '^(https?|file)://' | head -n1
}

# Debian base with python3, venv, iptables and libnftables, as a tar in the cache (debootstrap is the slow
# part: ~50 s). Locked, so two builds at once make it once.
base_tar() {
    local key tar mirror tmp proxy=""
    key=$(echo "$SUITE $INCLUDE" | sha256sum | cut -c1-12)
    tar="$CACHE/base-$SUITE-$key.tar"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/lock"
    flock 9
    if [ ! -s "$tar" ]; then
        mirror=${PYNET_PLUGIN_MIRROR:-$(host_mirror)}
        if [ -z "$mirror" ]; then
            echo "build-plugin: no 'deb' source for $SUITE in /etc/apt/sources.list{,.d/}; set" \
                 "PYNET_PLUGIN_MIRROR to a Debian mirror URL" >&2
            exit 1
        fi
        eval "$(apt-config shell proxy Acquire::http::Proxy)"
        [ -n "$proxy" ] && export http_proxy=$proxy
        tmp=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
        echo "build-plugin: debootstrap $SUITE from $mirror (first build only)" >&2
        debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$mirror" \
            >"$CACHE/debootstrap.log" 2>&1 || {
            tail -n 20 "$CACHE/debootstrap.log" >&2
            rm -rf "$tmp"
            exit 1
        }
        slim "$tmp"
        tar -C "$tmp" -cf "$tar.part" .
        mv "$tar.part" "$tar"
        rm -rf "$tmp"
    fi
    exec 9>&-
    echo "$tar"
}

# Drop what a plugin never reads: apt lists and caches, docs (copyright files stay), manuals,
# translations, logs.
slim() {
    local root=$1
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale \
        "$root"/usr/share/lintian "$root"/var/log/*
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
}

# pynet's wheel and its dependencies' wheels for the rootfs' python (cp311, manylinux), by the
# host's pip: pip inside the chroot cannot reach PyPI (reference P8). Versions are those of
# the checkout's venv when it has one, so the plugin runs what the tests ran.
wheelhouse() {
    local out=$1 src=$2 pip constraints=()
    if [ -x "$REPO/.venv/bin/pip" ]; then
        pip=("$REPO/.venv/bin/pip")
        "$REPO/.venv/bin/pip" freeze --exclude-editable >"$src.constraints"
        constraints=(--constraint "$src.constraints")
    else
        pip=(python3 -m pip)
    fi
    # Build from a copy: an in-tree build writes build/ and *.egg-info into a shared checkout.
    mkdir -p "$src"
    tar -C "$REPO" --exclude=__pycache__ -c pyproject.toml setup.cfg README.md plugin |
        tar -C "$src" -x
    # The host's pip config names local indexes that lack most projects; pip warns per
    # project, which says nothing about this build.
    {
        "${pip[@]}" wheel -q --no-deps --wheel-dir "$out" "$src"
        "${pip[@]}" download -q --only-binary=:all: --implementation cp \
            --python-version "$PYVER" --abi "cp${PYVER/./}" --platform "manylinux2014_$(uname -m)" \
            "${constraints[@]}" --dest "$out" "$out"/pynet-*.whl
    } 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# Everything in the chroot runs under env -i: the host's PIP_* settings must not leak in.
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$rootfs" "$@"
}

remove_plugin() {
    local ref=$1 users
    "$DOCKER" plugin inspect "$ref" >/dev/null 2>&1 || return 0
    users=$("$DOCKER" network ls -q --filter "driver=$ref")
    if [ -n "$users" ]; then
        echo "build-plugin: networks still use $ref; they stay recorded and work again once a" \
             "plugin of that name is enabled: $(echo "$users" | tr '\n' ' ')" >&2
    fi
    # -f: a plugin in use cannot be removed otherwise; also frees its rootfs blob, which
    # `plugin create` would refuse as a duplicate (reference P10).
    "$DOCKER" plugin rm -f "$ref" >/dev/null
}

# KEY=VALUE pairs the user changed on the installed plugin, for keys the new config.json still
# lets them set: a rebuild keeps them, as `docker plugin upgrade` does.
carried_settings() {
    "$DOCKER" plugin inspect "$1" >/dev/null 2>&1 || return 0
    "$DOCKER" plugin inspect "$1" | python3 -c '
import json, sys
old = json.load(sys.stdin)[0]
new = {e["name"]: e for e in json.load(open(sys.argv[1]))["env"]}
defaults = {e["Name"]: e["Value"] for e in old["Config"]["Env"]}
for pair in old["Settings"]["Env"]:
    key, _, value = pair.partition("=")
    if value != defaults.get(key) and "value" in new.get(key, {}).get("settable", []):
        print(pair)
' "$REPO/config.json" || true
}

# Remove the plugin and, once no network uses it, pynet's (then empty) iptables chains. The
# chains go after the plugin stopped, because a running pynet re-asserts them; the checkout's
# pynet does it with the plugin's own settings (instance name, state dir, backend).
uninstall_plugin() {
    local ref=$1 env name=pynet state="" backend="" pynet="$REPO/.venv/bin/pynet"
    "$DOCKER" plugin inspect "$ref" >/dev/null 2>&1 || return 0
    if [ -n "$("$DOCKER" network ls -q --filter "driver=$ref")" ]; then
        remove_plugin "$ref"
        return 0
    fi
    env=$("$DOCKER" plugin inspect -f '{{range .Settings.Env}}{{println .}}{{end}}' "$ref")
    while IFS='=' read -r key value; do
        case $key in
            PYNET_NAME) name=$value ;;
            PYNET_STATE_DIR) state=${value#/host} ;;  # config.json: host /var/lib at /host/var/lib
            PYNET_IPTABLES_BACKEND) backend=$value ;;
        esac
    done <<<"$env"
    remove_plugin "$ref"
    if [ -x "$pynet" ] && [ -n "$state" ]; then
        PYNET_IPTABLES_BACKEND=$backend "$pynet" --name "$name" --state-dir "$state" uninstall >&2
    else
        echo "build-plugin: pynet's chains stay; remove them with" \
             "'pynet --name $name uninstall' (make venv provides pynet)" >&2
    fi
}

enable=1
remove=0
while [ $# -gt 0 ]; do
    case $1 in
        --no-enable) enable=0; shift ;;
        --remove) remove=1; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
NAME=$1
TAG=$2
shift 2
REF="$NAME:$TAG"
for setting in "$@"; do
    [[ $setting == *=* ]] || usage
done

if [ "$remove" = 1 ]; then
    uninstall_plugin "$REF"
    echo "removed $REF (its records, if any, stay in its PYNET_STATE_DIR)" >&2
    exit 0
fi

started=$SECONDS
build=$(mktemp -d "${TMPDIR:-/var/tmp}/pynet-plugin.XXXXXX")
trap 'rm -rf "$build"' EXIT
rootfs="$build/plugin/rootfs"
mkdir -p "$rootfs"

base=$(base_tar)
step "base $(basename "$base")"
tar -C "$rootfs" -xf "$base"
step "rootfs unpacked"
wheelhouse "$rootfs/tmp/wheels" "$build/src"
step "wheels: $(find "$rootfs/tmp/wheels" -name '*.whl' | wc -l) files"
in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check \
    --find-links /tmp/wheels pynet
in_root /opt/venv/bin/pip uninstall -q -y pip setuptools
rm -rf "$rootfs/tmp/wheels" "$rootfs/usr/share/python-wheels" "$rootfs/root/.cache"
step "venv /opt/venv"

# Unique per build: dockerd refuses a rootfs identical to one it stores for another plugin
# (reference P10), and it tells which build a running plugin is.
printf 'plugin=%s\nbuilt=%s\ncommit=%s\n' "$REF" "$(date -u +%FT%TZ).$RANDOM" \
    "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    >"$rootfs/etc/pynet-build"
mkdir -p "$rootfs/run/docker/plugins" "$rootfs/host/proc/sys/net" "$rootfs/host/var/lib"
cp "$REPO/config.json" "$build/plugin/config.json"
echo "build-plugin: rootfs $(du -sm "$rootfs" | cut -f1) MB" >&2

# A plugin under another name is another pynet instance (own chains, link aliases, records):
# two plugins side by side must never manage each other's objects. Given settings override.
own=()
instance=${NAME##*/}
if [ "$instance" != pynet ] && [[ $instance =~ ^[a-z][a-z0-9-]{0,19}$ ]]; then
    own=("PYNET_NAME=$instance" "PYNET_STATE_DIR=/host/var/lib/$instance")
fi
mapfile -t carried < <(carried_settings "$REF")
remove_plugin "$REF"
step "old $REF removed"
"$DOCKER" plugin create "$REF" "$build/plugin" >/dev/null
step "plugin create $REF"
settings=("${own[@]}" "${carried[@]}" "$@")  # given ones last: dockerd applies them in order
if [ ${#settings[@]} -gt 0 ]; then
    [ ${#carried[@]} -eq 0 ] || echo "build-plugin: keeping settings ${carried[*]}" >&2
    "$DOCKER" plugin set "$REF" "${settings[@]}"
fi
if [ "$enable" = 1 ]; then
    "$DOCKER" plugin enable "$REF" >/dev/null
    step "plugin enable"
fi
echo "build-plugin: $REF ready in $((SECONDS - started))s;" \
     "use: docker network create -d $REF --subnet ..." >&2
