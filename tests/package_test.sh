#!/usr/bin/env bash
# ctest: the .deb that `cpack -G DEB` makes from this build tree holds the binary, the
# systemd unit, the settings file (a conffile, not world-readable) and maintainer scripts,
# depends on Debian's runtime libraries, and its binary runs. Nothing is installed on the
# machine: the package is unpacked into a scratch directory.
#   tests/package_test.sh BUILD_DIR
set -euo pipefail
build="$1"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
(cd "$build" && cpack -G DEB -B "$scratch/out" >"$scratch/cpack.log" 2>&1) || { cat "$scratch/cpack.log"; exit 1; }
deb="$(ls "$scratch"/out/mxhook_*.deb)"
contents="$(dpkg-deb -c "$deb")"
fail=0
need() {  # need PERMS PATH
    if ! grep -qE "^$1 .* \\./$2\$" <<<"$contents"; then
        echo "package_test: missing or wrong mode: $1 $2" >&2
        fail=1
    fi
}
need '-rwxr-xr-x' usr/bin/mxhook
need '-rw-r--r--' usr/lib/systemd/system/mxhook.service
need '-rw-r-----' etc/mxhook/mxhook.env
[ "$(dpkg-deb -f "$deb" Package)" = mxhook ] || { echo "package_test: wrong Package" >&2; fail=1; }
for lib in libssl3 libcurl4 libc-ares2 libsystemd0 libspf2-2 libopendkim11 libopendmarc2 publicsuffix adduser; do
    dpkg-deb -f "$deb" Depends | grep -q "$lib" || { echo "package_test: Depends lacks $lib" >&2; fail=1; }
done
mkdir "$scratch/control"
dpkg-deb -e "$deb" "$scratch/control"
grep -qx /etc/mxhook/mxhook.env "$scratch/control/conffiles" || { echo "package_test: env file is not a conffile" >&2; fail=1; }
grep -q "adduser --system" "$scratch/control/postinst" || { echo "package_test: postinst creates no user" >&2; fail=1; }
dpkg-deb -x "$deb" "$scratch/root"
"$scratch/root/usr/bin/mxhook" --version | grep -q '^mxhook ' || { echo "package_test: packaged binary does not run" >&2; fail=1; }
grep -q '^ExecStart=/usr/bin/mxhook$' "$scratch/root/usr/lib/systemd/system/mxhook.service" || fail=1
exit $fail
