//go:build race || msan || asan

package nbio

import (
	"errors"
	"syscall"
)

// Under the race detector, msan or asan, read and write go through package syscall, which tells
// the detectors what the kernel read and wrote; the scheduler's bookkeeping comes with it.

func read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errno(err)
}

func write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errno(err)
}

func errno(err error) syscall.Errno {
	var e syscall.Errno
	if err != nil && !errors.As(err, &e) {
		return syscall.EIO
	}
	return e
}
