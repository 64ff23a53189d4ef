package agent

// Finding a running pod's network namespace. The runtime does not tell the agent where a pod's
// namespace is, but every process of the pod lives in a cgroup whose path names the pod UID
// (kubepods/pod<uid>/…, kubepods-…-pod<uid_with_underscores>.slice/…, or the lab's …/<uid>): a
// process found that way is inside the pod, so its /proc/<pid>/ns/net is the pod's namespace.
// One scan of /proc indexes every pod on the node; it is refreshed when a lookup misses.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// errNoProcess is returned when no process of the pod was found: its containers have not
// started yet, or have all ended.
var errNoProcess = errors.New("no process of the pod found in /proc")

// procIndex maps pod UIDs to a process of the pod.
type procIndex struct {
	dir      string // /proc
	minAge   time.Duration
	now      func() time.Time
	mu       sync.Mutex
	byUID    map[string]int
	scanned  time.Time
	hostNet  uint64 // inode of the agent's own network namespace
	scanErrs int
}

func newProcIndex(dir string, now func() time.Time) *procIndex {
	p := &procIndex{dir: dir, minAge: 200 * time.Millisecond, now: now}
	if st, err := os.Stat(filepath.Join(dir, "self", "ns", "net")); err == nil {
		p.hostNet = inode(st)
	}
	return p
}

// netnsPath returns /proc/<pid>/ns/net of a process in the pod's network namespace. It rescans
// /proc when the UID is not indexed, at most once per minAge, so that onboarding a namespace of
// many pods costs one scan, not one per pod.
func (p *procIndex) netnsPath(uid string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		if pid, ok := p.byUID[uid]; ok {
			path := filepath.Join(p.dir, strconv.Itoa(pid), "ns", "net")
			if st, err := os.Stat(path); err == nil && inode(st) != p.hostNet {
				return path, nil
			}
			delete(p.byUID, uid) // the process ended or is not in a namespace of its own
		}
		if attempt == 0 && p.now().Sub(p.scanned) >= p.minAge {
			p.scan()
			continue
		}
		break
	}
	return "", fmt.Errorf("pod uid %s: %w", uid, errNoProcess)
}

func (p *procIndex) scan() {
	p.scanned = p.now()
	p.byUID = map[string]int{}
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		p.scanErrs++
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.dir, e.Name(), "cgroup"))
		if err != nil {
			continue // the process ended
		}
		for _, uid := range podUIDs(b) {
			if _, seen := p.byUID[uid]; !seen {
				p.byUID[uid] = pid
			}
		}
	}
}

// podUIDs returns the pod UIDs named in a /proc/<pid>/cgroup file: every 36-character UUID
// (dashes or the systemd driver's underscores) in the cgroup v2 path.
func podUIDs(cgroupFile []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(cgroupFile))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "0::") { // the unified hierarchy's line
			continue
		}
		for _, elem := range strings.Split(line[3:], "/") {
			for i := 0; i+36 <= len(elem); i++ {
				if u, ok := uuidAt(elem[i : i+36]); ok {
					out = append(out, u)
					i += 35
				}
			}
		}
	}
	return out
}

// uuidAt reports whether s is a UUID written with dashes or underscores, and returns it with
// dashes (as Kubernetes writes pod UIDs).
func uuidAt(s string) (string, bool) {
	b := []byte(s)
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' && c != '_' {
				return "", false
			}
			b[i] = '-'
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return "", false
			}
		}
	}
	return string(b), true
}
