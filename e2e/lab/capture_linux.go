package lab

// Packet captures on the lab switch: what crosses between the nodes (the bridge lab0 and every
// port of it), for showing and checking what the mesh puts on the wire. tcpdump runs in the
// switch namespace only; nothing is captured on the host's interfaces.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Capture is a finished capture.
type Capture struct {
	File string // the pcap file
	Raw  []byte // its bytes
}

// Packets returns tcpdump's reading of the packets matching filter (-nn, -A with ascii when
// ascii is set), at most max of them (0: all).
func (c Capture) Packets(ctx context.Context, filter string, ascii bool, max int) (string, error) {
	args := []string{"-nn", "-r", c.File}
	if ascii {
		args = append(args, "-A")
	}
	if max > 0 {
		args = append(args, "-c", fmt.Sprint(max))
	}
	out, err := exec.CommandContext(ctx, "tcpdump", append(args, filter)...).Output()
	return string(out), err
}

// Count returns how many packets match filter.
func (c Capture) Count(ctx context.Context, filter string) int {
	out, _ := c.Packets(ctx, filter, false, 0)
	return strings.Count(out, "\n")
}

// CaptureSwitch records the TCP packets crossing the lab switch while fn runs, into a file in
// dir. It returns once the packets fn caused that match settle (counted the same twice in a
// row), since tcpdump stops without writing what the kernel still holds for it.
func CaptureSwitch(ctx context.Context, dir, settle string, fn func() error) (Capture, error) {
	file := filepath.Join(dir, "lab.pcap")
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", SwitchNetns, "tcpdump", "-Z", "root", "-i", "any", "-U", "-s", "0", "-w", file, "tcp")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return Capture{}, err
	}
	if err := cmd.Start(); err != nil {
		return Capture{}, fmt.Errorf("tcpdump: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(listening)
			}
		}
	}()
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		stop()
		return Capture{}, errors.New("tcpdump did not start listening")
	}
	// The control plane's own traffic crosses the switch all the time: once some of it is in
	// the file, the capture is running.
	if err := poll(ctx, 10*time.Second, func() bool {
		st, err := os.Stat(file)
		return err == nil && st.Size() > 24
	}); err != nil {
		stop()
		return Capture{}, fmt.Errorf("tcpdump not capturing: %w", err)
	}
	ferr := fn()
	c := Capture{File: file}
	last := -1
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		n := c.Count(ctx, settle)
		if n > 0 && n == last {
			break
		}
		last = n
	}
	stop()
	c.Raw, err = os.ReadFile(file)
	return c, errors.Join(ferr, err)
}
