#!/usr/bin/env python3
"""A FUSE file system that stands in for a hung disk.

Passes every operation through to BACKING, except that while the file
BACKING/.hang exists, a write to a file whose name starts with "stuck"
blocks until it is removed, as a write to a dead NFS server or a failing
disk does (and BACKING/.blocked-NAME says it is held). Every other file,
and every other operation, goes on: the server is multithreaded.

Like a hard NFS mount (whose waits are killable), a held write fails with
EIO once the thread that made it has SIGKILL pending: the kernel waits for
a FUSE answer uninterruptibly, so without this a process could not even
exec while one of its threads is held.

While BACKING/.eio exists, a write to a file whose name starts with
"failing" fails with EIO, as on a disk with bad sectors.

    hangfs.py BACKING MOUNTPOINT     (runs in the foreground)
"""

import errno
import os
import sys
import time

import mfusepy as fuse


class HangFs(fuse.Operations):
    use_ns = True

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.hang = os.path.join(self.root, ".hang")

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _wait_if_stuck(self, path):
        name = os.path.basename(path)
        if not name.startswith("stuck") or not os.path.exists(self.hang):
            return
        # Says who is held, for the test to wait on.
        marker = os.path.join(self.root, ".blocked-" + name)
        open(marker, "w").close()
        tid = fuse.fuse_get_context()[2]
        try:
            while os.path.exists(self.hang):
                if killed(tid):
                    raise fuse.FuseOSError(errno.EIO)
                time.sleep(0.05)
        finally:
            os.unlink(marker)

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise fuse.FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path)) if fh is None else os.fstat(fh)
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_ino")
        out = {k: getattr(st, k) for k in keys}
        out["st_atime"] = st.st_atime_ns
        out["st_mtime"] = st.st_mtime_ns
        out["st_ctime"] = st.st_ctime_ns
        return out

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def unlink(self, path):
        os.unlink(self._path(path))

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def symlink(self, target, source):
        os.symlink(source, self._path(target))

    def link(self, target, source):
        os.link(self._path(source), self._path(target))

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._path(path), ns=times)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._path(path), length)

    def open(self, path, flags):
        return os.open(self._path(path), flags & ~os.O_NOFOLLOW | os.O_NOFOLLOW)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._wait_if_stuck(path)
        if os.path.basename(path).startswith("failing") and \
                os.path.exists(os.path.join(self.root, ".eio")):
            raise fuse.FuseOSError(errno.EIO)
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        self._wait_if_stuck(path)
        os.fsync(fh)
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}


SIGKILL_BIT = 1 << (9 - 1)


def killed(tid):
    """Whether thread `tid` has SIGKILL pending (or is gone)."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith(("SigPnd:", "ShdPnd:")):
                    if int(line.split()[1], 16) & SIGKILL_BIT:
                        return True
    except OSError:
        return True
    return False


def main():
    backing, mountpoint = sys.argv[1], sys.argv[2]
    # direct_io: every write reaches us, as it would a disk that hangs,
    # instead of stopping in the page cache.
    fuse.FUSE(HangFs(backing), mountpoint, foreground=True, nothreads=False,
              allow_other=True, default_permissions=False, direct_io=True)


if __name__ == "__main__":
    main()
