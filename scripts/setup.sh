#!/usr/bin/env bash
# Set up ebsengine on a fresh Debian machine (run as root, or with sudo available).
#   bash scripts/setup.sh           runtime: C-core build header + the package (editable)
#   bash scripts/setup.sh --test    also what the test suite needs (block clients, FUSE,
#                                   aws-cli, boto3, hypothesis, Ceph for the RADOS backend's
#                                   tests: scripts/ceph_cluster.sh starts a throw-away cluster)
#   bash scripts/setup.sh --bench   also what the benchmarks compare against (restic, moto;
#                                   RBD over NBD and librbd for benchmarks/bench_rados.py)
# Safe to run again: installed packages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0; want_bench=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --bench) want_test=1; want_bench=1 ;;
    *) echo "usage: $0 [--test|--bench]" >&2; exit 2 ;;
  esac
done

# libxxhash-dev: the C core includes <xxhash.h> (header-only use, no link dependency).
apt_pkgs=(libxxhash-dev gcc)
if [ "$want_test" = 1 ]; then
  # real NBD clients, the kernel mount pipeline and its checks (tests/test_nbd_*.py)
  apt_pkgs+=(qemu-utils libnbd-bin nbdkit fuse3 fio e2fsprogs util-linux kmod)
  # independent checks of key pairs: fingerprints (openssl), loading the keys (ssh-keygen,
  # puttygen) -- tests/keys_support.py
  apt_pkgs+=(openssl openssh-client putty-tools)
  # a one-host Ceph cluster for the RADOS backend's tests (scripts/ceph_cluster.sh) and the
  # librados binding (python3-rados)
  apt_pkgs+=(ceph-mon ceph-osd ceph-common python3-rados)
fi
if [ "$want_bench" = 1 ]; then
  apt_pkgs+=(restic)
  # benchmarks/bench_rados.py's RBD side: qemu-nbd serves an rbd: image over NBD through
  # qemu-block-extra's rbd driver (rbd-nbd would need the kernel's /dev/nbd*, which containers
  # like this one lack), and python3-rbd writes the 1% change through librbd
  apt_pkgs+=(qemu-block-extra python3-rbd)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$want_test" = 1 ]; then
  # Debian builds its librados binding for its own python3 and PyPI has none. It loads in any
  # CPython of the same minor version, so the python3 that pip installs into gets just that one
  # module: a directory holding a link to it, named by a .pth file in its site-packages (all of
  # dist-packages on the path would bring Debian's other packages along).
  link_rados() {
    local so dir=/usr/local/lib/ebsengine-rados site
    so=$(ls /usr/lib/python3/dist-packages/rados.cpython-*.so 2>/dev/null | head -n 1 || true)
    [ -n "$so" ] || { echo "setup: python3-rados installed no rados module" >&2; return 1; }
    site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO mkdir -p "$dir"
    $SUDO ln -sfn "$so" "$dir/$(basename "$so")"
    echo "$dir" | $SUDO tee "$site/ebsengine-rados.pth" >/dev/null
    if ! python3 -c 'import rados' 2>/dev/null; then
      echo "setup: warning: $(python3 -V) cannot load $so (built for another Python);" \
           "the RADOS tests will fail" >&2
    fi
  }
  link_rados
fi

extras=""
[ "$want_test" = 1 ] && extras="test"
[ "$want_bench" = 1 ] && extras="test,bench"
python3 -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
python3 -c "import ebsengine.codec as c; assert c.HAVE_C, 'C core did not build'; print('ebsengine ready (C core built)')"
