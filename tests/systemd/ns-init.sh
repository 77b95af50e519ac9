#!/usr/bin/env bash
# Runs as PID 1 of the new pid/mount/cgroup/uts/ipc namespaces (started by
# boot.sh through unshare): sets up the API file systems under ROOT, binds
# HOSTDIR at /host and execs systemd. Usage: ns-init.sh ROOT HOSTDIR
# With SD_PIVOT set it enters ROOT with pivot_root (and detaches the old root)
# instead of chroot: libvirt needs that, as its helpers setns() into QEMU's
# mount namespace, and after a chroot that lands in the host's /.
# SD_BIND="HOSTPATH:INSIDEPATH ..." (see boot.sh) binds each HOSTPATH at
# INSIDEPATH, made if missing, once /host is bound.
set -euo pipefail
R=$1 H=$2
mount --bind "$R" "$R"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid,size=4m tmpfs "$R/dev"
for d in null zero full random urandom tty; do
    touch "$R/dev/$d"
    mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -m 755 "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
mkdir -p "$R/host"
mount --bind "$H" "$R/host"
for b in ${SD_BIND:-}; do
    mkdir -p "$R/${b#*:}"
    mount --bind "${b%%:*}" "$R/${b#*:}"
done
if [ -z "${SD_PIVOT:-}" ]; then
    exec chroot "$R" /usr/bin/env -i container=unshare /usr/lib/systemd/systemd
fi
mkdir -p "$R/.oldroot"
cd "$R"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
exec /usr/bin/env -i container=unshare /usr/lib/systemd/systemd
