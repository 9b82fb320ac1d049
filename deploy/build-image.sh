#!/usr/bin/env bash
# Builds the Shale node image FROM scratch out of binaries compiled on this machine (no registry).
#
#   deploy/build-image.sh [--profile release|debug] [--binary PATH] [--cli PATH] [--tag NAME:TAG]
#                         [--keep-debug-info] [--no-cli]
#
# Without --binary it runs `cargo build -p shale-node` (and `-p shale-cli --bin shale` for the CLI) in the
# chosen profile, honouring CARGO_TARGET_DIR. The binary is glibc-dynamic, so the image also gets every
# shared library `ldd` names, the dynamic loader, glibc's NSS modules (files, dns) with libresolv and a
# minimal /etc, so getaddrinfo resolves container and service names. The default tag is shale:dev.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile=release
binary=""
cli=""
tag="shale:dev"
keep_debug=0
want_cli=1

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "build-image.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --cli) cli="${2:?--cli needs a path}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --keep-debug-info) keep_debug=1; shift ;;
        --no-cli) want_cli=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$profile" in
    release) cargo_profile_flag=(--release); profile_dir=release ;;
    debug) cargo_profile_flag=(); profile_dir=debug ;;
    *) die "--profile must be release or debug, not $profile" ;;
esac
command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is not installed (glibc's libc-bin)"

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
if [[ -z "$binary" ]]; then
    echo "== cargo build -p shale-node ($profile)"
    (cd "$repo_root" && cargo build -p shale-node --bin shale-node "${cargo_profile_flag[@]}")
    binary="$target_dir/$profile_dir/shale-node"
    if [[ -z "$cli" && $want_cli -eq 1 ]] && grep -q '^name = "shale"$' "$repo_root/admin-cli/Cargo.toml" 2>/dev/null; then
        echo "== cargo build -p shale-cli --bin shale ($profile)"
        if (cd "$repo_root" && cargo build -p shale-cli --bin shale "${cargo_profile_flag[@]}"); then
            cli="$target_dir/$profile_dir/shale"
        else
            echo "build-image.sh: the shale CLI does not build; the image gets the node only" >&2
        fi
    fi
elif [[ -z "$cli" && $want_cli -eq 1 && -x "$(dirname "$binary")/shale" ]]; then
    # A prebuilt node binary: take the CLI built beside it (--cli PATH or --no-cli to choose otherwise).
    cli="$(dirname "$binary")/shale"
fi
[[ -x "$binary" ]] || die "no executable node binary at $binary"
[[ -z "$cli" || -x "$cli" ]] || die "no executable CLI binary at $cli"

stage="$(mktemp -d "${TMPDIR:-/tmp}/shale-image.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
rootfs="$stage/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$stage/data" "$stage/tmp"

# Copies a file to the same path under rootfs, following symlinks (the loader finds libraries by
# the path ldd printed, so that path must exist in the image).
copy_abs() {
    local src="$1"
    [[ -e "$rootfs$src" ]] && return 0
    mkdir -p "$rootfs$(dirname "$src")"
    cp -L "$src" "$rootfs$src"
}

install_binary() {
    local src="$1" name="$2"
    cp -L "$src" "$rootfs/usr/local/bin/$name"
    if [[ $keep_debug -eq 0 ]] && command -v strip >/dev/null; then
        strip --strip-debug "$rootfs/usr/local/bin/$name"
    fi
    chmod 0755 "$rootfs/usr/local/bin/$name"
    # Every shared library and the loader: lines are `name => /path (addr)` or `/path (addr)`.
    local libs
    libs="$(ldd "$src" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }')"
    if ldd "$src" | grep -q 'not found'; then
        die "$src needs a library this machine lacks: $(ldd "$src" | grep 'not found')"
    fi
    local lib
    for lib in $libs; do copy_abs "$lib"; done
}

install_binary "$binary" shale-node
[[ -n "$cli" ]] && install_binary "$cli" shale

# glibc loads NSS modules at run time (not listed by ldd): files for /etc/hosts, dns for resolv.conf.
libc_path="$(ldd "$binary" | awk '$1 ~ /^libc\.so/ { print $3 }')"
[[ -n "$libc_path" ]] || die "cannot find libc in ldd output of $binary"
libdir="$(dirname "$libc_path")"
for lib in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    if [[ -e "$libdir/$lib" ]]; then
        copy_abs "$libdir/$lib"
    else
        echo "build-image.sh: note: $libdir/$lib not present (built into libc on this glibc)" >&2
    fi
done

cat >"$rootfs/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
networks: files
services: files
NSS
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/nonexistent:/sbin/nologin
shale:x:10001:10001:shale:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
shale:x:10001:
nogroup:x:65534:
GROUP
# Docker bind-mounts its own hosts/resolv.conf/hostname over these; they exist for other runtimes.
touch "$rootfs/etc/hosts" "$rootfs/etc/resolv.conf"

cp "$repo_root/deploy/Dockerfile" "$stage/Dockerfile"
sha="$(sha256sum "$binary" | cut -d' ' -f1)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo_root/Cargo.toml" | head -1)"

previous="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
echo "== docker build -t $tag (node: $binary${cli:+, cli: $cli})"
docker build --quiet \
    --build-arg "SHALE_VERSION=${version:-dev}" \
    --build-arg "SHALE_BINARY_SHA256=$sha" \
    -t "$tag" "$stage"
# The image this tag named before is now untagged: remove it unless something still uses it.
current="$(docker image inspect --format '{{.Id}}' "$tag")"
if [[ -n "$previous" && "$previous" != "$current" ]] \
    && [[ "$(docker image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" == "0" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "== built $tag ($(docker image inspect --format '{{.Size}}' "$tag") bytes)"
