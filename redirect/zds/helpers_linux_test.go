package zds

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
)

// waitFor bounds every wait in these tests: a condition polled for, a message read.
const waitFor = 10 * time.Second

// logs captures what a component logs, for assertions.
type logs struct{ testutil.LogBuffer }

func (l *logs) contains(s string) bool { return strings.Contains(l.String(), s) }

func (l *logs) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fdCount is the number of fds this process has open.
func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkNoFDLeak fails the test if, at its end, more fds are open than now.
func checkNoFDLeak(t *testing.T) {
	before := fdCount(t)
	t.Cleanup(func() {
		testutil.Eventually(t, waitFor, "fds back to where they were", func() bool { return fdCount(t) <= before })
	})
}

type testServer struct {
	*Server
	path string
	logs *logs
}

// startServer runs a Server until the test ends; mod edits its config.
func startServer(t *testing.T, mod func(*ServerConfig)) *testServer {
	t.Helper()
	ts := &testServer{path: filepath.Join(t.TempDir(), "zds.sock"), logs: &logs{}}
	cfg := DefaultServerConfig()
	cfg.Path, cfg.Log = ts.path, ts.logs.logger()
	if mod != nil {
		mod(&cfg)
	}
	var err error
	if ts.Server, err = NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	runBackground(t, "Server.Run", ts.Run)
	return ts
}

// runBackground runs fn until the test ends, then cancels it and wants nil back.
func runBackground(t *testing.T, name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
}

// startClient runs RunClient against path until the test ends.
func startClient(t *testing.T, path, node string, h Handler) *logs {
	t.Helper()
	l := &logs{}
	cfg := DefaultClientConfig()
	cfg.Path, cfg.Node, cfg.Log, cfg.Handler = path, node, l.logger(), h
	cfg.Backoff = Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond}
	runBackground(t, "RunClient", func(ctx context.Context) error { return RunClient(ctx, cfg) })
	return l
}

// fakeHandler records what a proxy is told, as "add uid", "keep uid", "del uid", "snapshot a,b".
type fakeHandler struct {
	mu     sync.Mutex
	events []string
	inodes map[string][2]uint64 // uid → netns dev, inode
	fail   map[string]string    // uid → AddWorkload error
}

func newFakeHandler() *fakeHandler {
	return &fakeHandler{inodes: make(map[string][2]uint64), fail: make(map[string]string)}
}

func (h *fakeHandler) AddWorkload(_ context.Context, w *zdsv1.WorkloadInfo, _ uint64, netns *os.File) error {
	defer netns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(netns.Fd()), &st); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, "add "+w.Uid)
	h.inodes[w.Uid] = [2]uint64{st.Dev, st.Ino}
	if msg := h.fail[w.Uid]; msg != "" {
		return errors.New(msg)
	}
	return nil
}

func (h *fakeHandler) KeepWorkload(uid string) error { h.record("keep " + uid); return nil }
func (h *fakeHandler) DelWorkload(uid string) error  { h.record("del " + uid); return nil }

func (h *fakeHandler) SnapshotDone(replayed map[string]bool) {
	var uids []string
	for uid := range replayed {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	h.record("snapshot " + strings.Join(uids, ","))
}

func (h *fakeHandler) record(e string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, e)
}

func (h *fakeHandler) setFail(uid, msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail[uid] = msg
}

func (h *fakeHandler) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

func (h *fakeHandler) waitSeen(t *testing.T, want ...string) {
	t.Helper()
	testutil.Eventually(t, waitFor, "handler events "+strings.Join(want, "; "), func() bool { return slices.Equal(h.seen(), want) })
}

// workload returns a Workload whose "netns" is the read end of a new pipe, closed at the test's end.
func workload(t *testing.T, uid string) Workload {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return Workload{Info: &zdsv1.WorkloadInfo{Uid: uid, Name: "pod-" + uid, Namespace: "default"}, NetnsCookie: 42, Netns: r}
}

func fileID(t *testing.T, f *os.File) [2]uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint64{st.Dev, st.Ino}
}

// dialRaw connects to path as a test-driven peer, retrying until the socket listens.
func dialRaw(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	var uc *net.UnixConn
	testutil.Eventually(t, waitFor, "dial "+path, func() bool {
		var err error
		uc, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		return err == nil
	})
	t.Cleanup(func() { uc.Close() })
	return uc
}

// send writes m (or raw bytes) with files as SCM_RIGHTS.
func send(t *testing.T, uc *net.UnixConn, m any, files ...*os.File) {
	t.Helper()
	var b []byte
	switch m := m.(type) {
	case []byte:
		b = m
	case proto.Message:
		var err error
		if b, err = proto.Marshal(m); err != nil {
			t.Fatal(err)
		}
	}
	var fds []int
	for _, f := range files {
		fds = append(fds, int(f.Fd()))
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := uc.WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatal(err)
	}
}

func hello(node string) *zdsv1.ProxyMessage {
	return &zdsv1.ProxyMessage{Payload: &zdsv1.ProxyMessage_Hello{Hello: &zdsv1.Hello{Version: Version, Node: node}}}
}

func ack(msg string) *zdsv1.ProxyMessage {
	return &zdsv1.ProxyMessage{Payload: &zdsv1.ProxyMessage_Ack{Ack: &zdsv1.Ack{Error: msg}}}
}

// readAgent reads one agent message as a proxy would; the caller owns the returned file.
func readAgent(t *testing.T, uc *net.UnixConn) (*zdsv1.AgentMessage, *os.File) {
	t.Helper()
	uc.SetReadDeadline(time.Now().Add(waitFor))
	b, fds, err := newPacketConn(uc).read()
	if err != nil {
		t.Fatalf("read agent message: %v", err)
	}
	m, f, err := decodeAgent(b, fds)
	if err != nil {
		t.Fatal(err)
	}
	return m, f
}

// readProxy reads one proxy message as the agent would.
func readProxy(t *testing.T, uc *net.UnixConn) *zdsv1.ProxyMessage {
	t.Helper()
	uc.SetReadDeadline(time.Now().Add(waitFor))
	b, fds, err := newPacketConn(uc).read()
	if err != nil {
		t.Fatalf("read proxy message: %v", err)
	}
	m, err := decodeProxy(b, fds)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// expectClosed reads from uc until the peer has closed it, discarding (and closing) what comes.
func expectClosed(t *testing.T, uc *net.UnixConn) {
	t.Helper()
	uc.SetReadDeadline(time.Now().Add(waitFor))
	pc := newPacketConn(uc)
	for {
		_, fds, err := pc.read()
		closeFDs(fds)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("peer did not close the connection")
			}
			return
		}
	}
}
